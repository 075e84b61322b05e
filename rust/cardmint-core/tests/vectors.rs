//! The shared vectors of `tests/vectors/` (written from the pure-Python reference) checked
//! against this crate, byte for byte. A missing file is skipped with a note, so the crate
//! still tests on its own; every file present is read whole.

use std::path::PathBuf;

use cardmint_core::alphabet::{check_symbol, display};
use cardmint_core::correct::correct;
use cardmint_core::digest::{digest, digest_one};
use cardmint_core::index::DigestIndex;
use cardmint_core::mint::Minter;
use cardmint_core::normalize::{check, check_one, normalize};
use cardmint_core::seal::{open, seal};
use cardmint_core::serial::{serials, validate_serials};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors")
}

/// Data rows of a vector file (tab-separated, `#` comments skipped), or None if absent.
fn rows(name: &str) -> Option<Vec<Vec<String>>> {
    let path = dir().join(name);
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("vector file {} not present; skipped", path.display());
        return None;
    };
    let rows: Vec<Vec<String>> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect();
    assert!(!rows.is_empty(), "{name} has no rows");
    Some(rows)
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn num(s: &str) -> usize {
    s.parse().expect("number")
}

fn list(s: &str) -> Vec<Vec<u8>> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split(',').map(|x| x.as_bytes().to_vec()).collect()
    }
}

fn offsets(lens: &[usize]) -> Vec<u8> {
    let mut out = vec![0u8; 8];
    let mut at = 0i64;
    for &l in lens {
        at += l as i64;
        out.extend_from_slice(&at.to_le_bytes());
    }
    out
}

#[test]
fn checkchar() {
    let Some(rows) = rows("checkchar.tsv") else {
        return;
    };
    for r in rows {
        let got = check_symbol(r[0].as_bytes()).expect("check symbol");
        assert_eq!(got, r[1].as_bytes()[0], "payload {}", r[0]);
    }
}

/// `normalize` or `check`: (data, offsets, length, threads) -> (codes, statuses).
type BulkFn = fn(&[u8], &[u8], usize, usize) -> cardmint_core::Result<(Vec<u8>, Vec<u8>)>;

fn normalize_like(file: &str, bulk_fn: BulkFn, scalar: bool) {
    let Some(rows) = rows(file) else { return };
    for r in &rows {
        let input = hex(&r[0]);
        let length = num(&r[1]);
        let status: u8 = r[2].parse().expect("status");
        let code = r.get(3).map_or(&[][..], |c| c.as_bytes());
        let (codes, st) = bulk_fn(&input, &offsets(&[input.len()]), length, 1).expect("bulk");
        assert_eq!(st, vec![status], "{file}: input {}", r[0]);
        if code.is_empty() {
            assert_eq!(codes, vec![0u8; length], "{file}: input {}", r[0]);
        } else {
            assert_eq!(codes, code, "{file}: input {}", r[0]);
        }
        if scalar {
            let (s, c) = check_one(&input, length).expect("check_one");
            assert_eq!((s, c.as_slice()), (status, code), "check_one {}", r[0]);
        }
    }
    // All rows of one length at once, in parallel, give the same answers.
    let length = num(&rows[0][1]);
    let same: Vec<&Vec<String>> = rows.iter().filter(|r| num(&r[1]) == length).collect();
    let inputs: Vec<Vec<u8>> = same.iter().map(|r| hex(&r[0])).collect();
    let data: Vec<u8> = inputs.concat();
    let lens: Vec<usize> = inputs.iter().map(Vec::len).collect();
    let many = 5000 / same.len() + 1;
    let mut big_data = Vec::new();
    let mut big_lens = Vec::new();
    for _ in 0..many {
        big_data.extend_from_slice(&data);
        big_lens.extend_from_slice(&lens);
    }
    let (_, st) = bulk_fn(&big_data, &offsets(&big_lens), length, 2).expect("bulk");
    let want: Vec<u8> = same
        .iter()
        .map(|r| r[2].parse::<u8>().expect("status"))
        .collect();
    for chunk in st.chunks(same.len()) {
        assert_eq!(chunk, &want[..]);
    }
}

#[test]
fn normalize_vectors() {
    normalize_like("normalize.tsv", normalize, false);
}

#[test]
fn check_vectors() {
    normalize_like("check.tsv", check, true);
}

#[test]
fn mint_vectors() {
    let Some(rows) = rows("mint.tsv") else { return };
    for r in rows {
        let seed = hex(&r[0]);
        let length = num(&r[1]);
        let unique = r[3] == "1";
        let want: Vec<u8> = list(&r[5]).concat();
        for threads in [1, 2] {
            let mut m = Minter::new(length, r[2].as_bytes(), &seed, unique).expect("minter");
            let mut got = Vec::new();
            for size in r[4].split(',') {
                got.extend(m.fill(num(size) as u64, threads).expect("fill"));
            }
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want),
                "seed {} fills {}",
                r[0],
                r[4]
            );
        }
    }
}

#[test]
fn digest_vectors() {
    let Some(rows) = rows("digest.tsv") else {
        return;
    };
    for r in rows {
        let key = hex(&r[0]);
        let size = num(&r[1]);
        let want = hex(&r[3]);
        assert_eq!(
            digest_one(r[2].as_bytes(), &key, size).expect("digest"),
            want
        );
        let bulk = digest(r[2].as_bytes(), r[2].len(), &key, size, 1).expect("digest");
        assert_eq!(bulk, want);
    }
}

#[test]
fn display_vectors() {
    let Some(rows) = rows("display.tsv") else {
        return;
    };
    for r in rows {
        let got = display(r[2].as_bytes(), num(&r[0]), num(&r[1])).expect("display");
        assert_eq!(String::from_utf8_lossy(&got), r[3]);
    }
}

#[test]
fn seal_vectors() {
    let Some(rows) = rows("seal.tsv") else { return };
    for r in rows {
        let key = hex(&r[0]);
        let code = r[1].as_bytes();
        let d = hex(&r[2]);
        let nonce = hex(&r[3]);
        let want = hex(&r[4]);
        let got = seal(code, code.len(), &d, d.len(), &key, &nonce, 1).expect("seal");
        assert_eq!(got, want, "code {}", r[1]);
        let back = open(&want, code.len(), &d, d.len(), &key, 1).expect("open");
        assert_eq!(back, code);
    }
}

#[test]
fn serial_vectors() {
    if let Some(rows) = rows("serial.tsv") {
        for r in rows {
            let got = serials(
                r[0].as_bytes(),
                num(&r[1]) as u64,
                num(&r[2]) as u64,
                num(&r[3]),
            )
            .expect("serials");
            let want = list(&r[4]).concat();
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want)
            );
        }
    }
    if let Some(rows) = rows("serial_validate.tsv") {
        for r in rows {
            let s = r[0].as_bytes();
            let got = validate_serials(s, s.len()).expect("validate");
            assert_eq!(
                got,
                vec![r[1].parse::<u8>().expect("flag")],
                "serial {}",
                r[0]
            );
        }
    }
}

#[test]
fn correct_vectors() {
    let Some(rows) = rows("correct.tsv") else {
        return;
    };
    for r in rows {
        let key = hex(&r[0]);
        let size = num(&r[1]);
        let length = num(&r[2]);
        let issued = list(&r[3]);
        let flat = issued.concat();
        let d = digest(&flat, length, &key, size, 1).expect("digest");
        let mut idx = DigestIndex::new(size).expect("index");
        idx.build(&d, 1).expect("build");
        let input = hex(&r[4]);
        let c = correct(&input, length, &idx, &key).expect("correct");
        assert_eq!(
            c.status,
            r[5].parse::<u8>().expect("status"),
            "input {}",
            r[4]
        );
        assert_eq!(
            String::from_utf8_lossy(&c.normalized),
            r[6],
            "input {}",
            r[4]
        );
        let want = list(r.get(7).map_or("", String::as_str));
        assert_eq!(c.candidates, want, "input {}", r[4]);
    }
}

#[test]
fn index_vectors() {
    let Some(rows) = rows("index.tsv") else {
        return;
    };
    for r in rows {
        let path = dir().join(&r[0]);
        let path = path.to_string_lossy();
        let width = num(&r[1]);
        let want = list(r.get(2).map_or("", String::as_str))
            .iter()
            .flat_map(|h| hex(std::str::from_utf8(h).expect("utf8")))
            .collect::<Vec<u8>>();
        let idx = DigestIndex::load(&path, 1).expect("load");
        assert_eq!(idx.width(), width);
        assert_eq!(idx.digests(), &want[..]);
        // Saving reproduces the file byte for byte.
        let tmp =
            std::env::temp_dir().join(format!("cardmint-vec-{}-{}", std::process::id(), r[0]));
        let tmp = tmp.to_string_lossy().into_owned();
        idx.save(&tmp).expect("save");
        assert_eq!(
            std::fs::read(&tmp).expect("read"),
            std::fs::read(&*path).expect("read")
        );
        std::fs::remove_file(&tmp).expect("cleanup");
        for (i, d) in want.chunks(width).enumerate() {
            assert_eq!(idx.find(d), Some(i));
        }
    }
}
