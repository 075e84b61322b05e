"""A tiny reader for the XLSX files the CLI writes (shared or inline strings, numbers)."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from xml.etree import ElementTree as ET

NS = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
R_NS = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"


def _col(ref: str) -> int:
    letters = re.match(r"[A-Z]+", ref)
    assert letters is not None
    n = 0
    for ch in letters.group(0):
        n = n * 26 + ord(ch) - 64
    return n - 1


def read_sheets(path: Path) -> list[tuple[str, list[list[str]]]]:
    """[(sheet name, rows as lists of cell text)] in workbook order."""
    with zipfile.ZipFile(path) as z:
        shared: list[str] = []
        if "xl/sharedStrings.xml" in z.namelist():
            root = ET.fromstring(z.read("xl/sharedStrings.xml"))
            shared = [
                "".join(t.text or "" for t in si.iter(f"{{{NS['m']}}}t")) for si in root.findall("m:si", NS)
            ]
        rels = ET.fromstring(z.read("xl/_rels/workbook.xml.rels"))
        target = {r.get("Id"): r.get("Target") for r in rels}
        wb = ET.fromstring(z.read("xl/workbook.xml"))
        out = []
        for sh in wb.find("m:sheets", NS) or []:
            xml = ET.fromstring(z.read("xl/" + str(target[sh.get(R_NS)]).lstrip("/").removeprefix("xl/")))
            rows = []
            for row in xml.iter(f"{{{NS['m']}}}row"):
                cells: list[str] = []
                for c in row.findall("m:c", NS):
                    i = _col(str(c.get("r")))
                    cells.extend([""] * (i + 1 - len(cells)))
                    t = c.get("t")
                    if t == "s":
                        v = c.find("m:v", NS)
                        cells[i] = shared[int(v.text or "0")] if v is not None else ""
                    elif t == "inlineStr":
                        cells[i] = "".join(x.text or "" for x in c.iter(f"{{{NS['m']}}}t"))
                    else:
                        v = c.find("m:v", NS)
                        cells[i] = (v.text or "") if v is not None else ""
                rows.append(cells)
            out.append((str(sh.get("name")), rows))
        return out
