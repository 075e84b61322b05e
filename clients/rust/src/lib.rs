//! A Rust client of the cardmint gRPC API.
//!
//! The message types and the service clients in [`pb`] are generated at build time (see
//! `build.rs`) from `proto/cardmint/v1/*.proto`, the files the Python server is built from;
//! nothing here restates a message by hand. On top of them: [`connect`] opens a channel
//! whose every call carries `authorization: Bearer <token>`, [`unpack`] reads the packed
//! strings that bulk calls return, and [`demo`] is the walk-through the `cardmint-rs-demo`
//! binary runs.

use std::fmt;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub mod demo;

/// The generated `cardmint.v1` package: messages, enums and one client per service.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/cardmint.v1.rs"));
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer {
    value: MetadataValue<Ascii>,
}

// The token is a credential: never printed, not even by `{:?}`.
impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Bearer(..)")
    }
}

impl Bearer {
    /// Fails when the token is empty or not printable ASCII (it could not be sent as metadata).
    pub fn new(token: &str) -> Result<Self, Error> {
        let token = token.trim();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Usage(
                "the token must be non-empty printable ASCII".into(),
            ));
        }
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Error::Usage("the token cannot be sent as gRPC metadata".into()))?;
        Ok(Self { value })
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut()
            .insert("authorization", self.value.clone());
        Ok(req)
    }
}

/// A channel whose calls all carry the bearer token.
pub type Authed = InterceptedService<Channel, Bearer>;

/// The clients of the services the demo uses, sharing one HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct Clients {
    /// CatalogService: products.
    pub catalog: pb::catalog_service_client::CatalogServiceClient<Authed>,
    /// LotService: minting lots and streaming their codes.
    pub lots: pb::lot_service_client::LotServiceClient<Authed>,
    /// CardService: binding cards to accounts.
    pub cards: pb::card_service_client::CardServiceClient<Authed>,
    /// BalanceService: balances and redemptions.
    pub balances: pb::balance_service_client::BalanceServiceClient<Authed>,
}

/// Connects to `addr` (`host:port`, plaintext HTTP/2, as `cardmint serve` listens).
///
/// `timeout` bounds every call, streams included; the connection itself gets ten seconds.
pub async fn connect(addr: &str, token: &str, timeout: Duration) -> Result<Clients, Error> {
    let auth = Bearer::new(token)?;
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let channel = Endpoint::from_shared(uri)
        .map_err(|e| Error::Usage(format!("bad server address {addr:?}: {e}")))?
        .connect_timeout(Duration::from_secs(10))
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| Error::Connect(addr.to_owned(), e))?;
    Ok(Clients {
        catalog: pb::catalog_service_client::CatalogServiceClient::with_interceptor(
            channel.clone(),
            auth.clone(),
        ),
        lots: pb::lot_service_client::LotServiceClient::with_interceptor(
            channel.clone(),
            auth.clone(),
        ),
        cards: pb::card_service_client::CardServiceClient::with_interceptor(
            channel.clone(),
            auth.clone(),
        ),
        balances: pb::balance_service_client::BalanceServiceClient::with_interceptor(channel, auth),
    })
}

/// Splits a [`pb::PackedStrings`] into its strings (`common.proto` defines the layout: all
/// `width` bytes long, or each as long as its entry in `lengths`).
pub fn unpack(packed: &pb::PackedStrings) -> Result<Vec<String>, Error> {
    let data = packed.data.as_slice();
    let bad = |why: &str| Error::Protocol(format!("PackedStrings: {why}"));
    let mut out = Vec::new();
    if packed.width != 0 {
        if !packed.lengths.is_empty() {
            return Err(bad("both width and lengths are set"));
        }
        let width = usize::try_from(packed.width).map_err(|_| bad("width too large"))?;
        if !data.len().is_multiple_of(width) {
            return Err(bad("data is not a whole number of strings"));
        }
        for chunk in data.chunks_exact(width) {
            out.push(utf8(chunk).ok_or_else(|| bad("not UTF-8"))?);
        }
        return Ok(out);
    }
    let mut rest = data;
    for &len in &packed.lengths {
        let len = usize::try_from(len).map_err(|_| bad("length too large"))?;
        if len > rest.len() {
            return Err(bad("lengths run past the data"));
        }
        let (s, tail) = rest.split_at(len);
        out.push(utf8(s).ok_or_else(|| bad("not UTF-8"))?);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(bad("data left over after the last length"));
    }
    Ok(out)
}

fn utf8(b: &[u8]) -> Option<String> {
    std::str::from_utf8(b).ok().map(str::to_owned)
}

/// What can go wrong; [`Error::exit_code`] says how the demo exits on it.
#[derive(Debug)]
pub enum Error {
    /// Bad arguments or environment.
    Usage(String),
    /// The server could not be reached.
    Connect(String, tonic::transport::Error),
    /// The server refused or failed a call.
    Call(&'static str, tonic::Status),
    /// The server answered something the client cannot make sense of.
    Protocol(String),
    /// An answer that is well-formed but not what the walk-through expects.
    Unexpected(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) => write!(f, "usage: {m}"),
            Error::Connect(addr, e) => {
                // tonic's transport error says "transport error"; the cause is in its sources.
                write!(f, "cannot reach {addr}: {e}")?;
                let mut cause = std::error::Error::source(e);
                while let Some(c) = cause {
                    write!(f, ": {c}")?;
                    cause = c.source();
                }
                Ok(())
            }
            Error::Call(rpc, s) => write!(f, "{rpc} failed: {:?}: {}", s.code(), s.message()),
            Error::Protocol(m) => write!(f, "protocol error: {m}"),
            Error::Unexpected(m) => write!(f, "unexpected answer: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// 2 when the request never got to be judged (bad arguments, server unreachable, token
    /// refused), 1 when the server refused it or answered something unexpected: the exit
    /// statuses of the `cardmint` command.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::Connect(..) => 2,
            Error::Call(_, s)
                if matches!(
                    s.code(),
                    tonic::Code::Unauthenticated | tonic::Code::Unavailable
                ) =>
            {
                2
            }
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(data: &[u8], lengths: &[u32], width: u32) -> pb::PackedStrings {
        pb::PackedStrings {
            data: data.to_vec(),
            lengths: lengths.to_vec(),
            width,
        }
    }

    #[test]
    fn unpack_fixed_width() {
        let got = unpack(&packed(b"AB12CD34", &[], 4)).expect("valid");
        assert_eq!(got, ["AB12", "CD34"]);
    }

    #[test]
    fn unpack_lengths_and_empty() {
        let got = unpack(&packed("a\u{e9}xyz".as_bytes(), &[3, 0, 3], 0)).expect("valid");
        assert_eq!(got, ["a\u{e9}", "", "xyz"]);
        assert!(unpack(&packed(b"", &[], 0)).expect("valid").is_empty());
    }

    #[test]
    fn unpack_refuses_malformed() {
        for bad in [
            packed(b"ABC", &[], 2),
            packed(b"ABCD", &[1], 2),
            packed(b"ABC", &[2], 0),
            packed(b"AB", &[3], 0),
            packed(&[0xff, 0xfe], &[], 2),
        ] {
            assert!(unpack(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bearer_header_and_redacted_debug() {
        let mut auth = Bearer::new(" tok-123 ").expect("valid");
        assert_eq!(format!("{auth:?}"), "Bearer(..)");
        let req = tonic::service::Interceptor::call(&mut auth, tonic::Request::new(()))
            .expect("intercepted");
        let got = req.metadata().get("authorization").expect("header");
        assert_eq!(got.to_str().expect("ascii"), "Bearer tok-123");
        assert!(Bearer::new("").is_err());
        assert!(Bearer::new("a b").is_err());
        assert!(Bearer::new("caf\u{e9}").is_err());
    }
}
