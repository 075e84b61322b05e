//! `cardmint-rs-demo`: the cardmint API from Rust, end to end, against a running server.
//!
//! Creates a product, mints a small lot and streams its codes back, binds one card to an
//! account, redeems from it (twice with one request id: the second is a replay) and reads
//! the balances back. One line per step on stdout; on the first failure a line on stderr
//! and exit status 1 (the server refused or answered something unexpected) or 2 (bad
//! arguments, no token or a refused one, server unreachable).

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cardmint_client::demo::{self, Plan};
use cardmint_client::{connect, Error};

const USAGE: &str = "\
usage: cardmint-rs-demo [--server HOST:PORT] [--sku SKU] [--account NAME] [--count N]
                        [--face-value MINOR] [--currency CODE] [--redeem MINOR]
                        [--request-id ID] [--timeout SECONDS]

The admin token comes from $CARDMINT_TOKEN (or --token TOKEN); the server from --server,
else $CARDMINT_SERVER, else 127.0.0.1:50051. Amounts are in minor units (10000 = 100.00).
Defaults: a new SKU RS-<time>-<pid>, account rs-demo, 5 cards of 10000 CNY, redeem 2500,
request id <SKU>-redeem, 60 s per call.";

#[derive(Debug)]
struct Args {
    server: String,
    token: String,
    timeout: Duration,
    plan: Plan,
}

/// `Ok(None)` for `--help`; `env` looks up an environment variable.
fn parse(
    mut argv: impl Iterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Args>, Error> {
    let env = |k: &str| env(k).filter(|v| !v.is_empty());
    let mut server = env("CARDMINT_SERVER").unwrap_or_else(|| "127.0.0.1:50051".into());
    let mut token = env("CARDMINT_TOKEN");
    let mut sku = None;
    let mut request_id = None;
    let mut timeout = 60u64;
    let mut plan = Plan {
        sku: String::new(),
        account: "rs-demo".into(),
        count: 5,
        face_value: 10_000,
        currency: "CNY".into(),
        redeem: 2_500,
        request_id: String::new(),
    };
    while let Some(flag) = argv.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let mut value = || {
            argv.next()
                .ok_or_else(|| Error::Usage(format!("{flag} needs a value")))
        };
        let number = |v: String| {
            v.parse::<i64>()
                .map_err(|_| Error::Usage(format!("{flag}: not a whole number: {v:?}")))
        };
        match flag.as_str() {
            "--server" => server = value()?,
            "--token" => token = Some(value()?),
            "--sku" => sku = Some(value()?),
            "--account" => plan.account = value()?,
            "--count" => plan.count = number(value()?)?,
            "--face-value" => plan.face_value = number(value()?)?,
            "--currency" => plan.currency = value()?,
            "--redeem" => plan.redeem = number(value()?)?,
            "--request-id" => request_id = Some(value()?),
            "--timeout" => {
                timeout = u64::try_from(number(value()?)?)
                    .ok()
                    .filter(|t| (1..=3600).contains(t))
                    .ok_or_else(|| Error::Usage("--timeout: 1-3600 seconds".into()))?;
            }
            other => return Err(Error::Usage(format!("unknown argument {other:?}"))),
        }
    }
    let token = token.ok_or_else(|| {
        Error::Usage("no token: set CARDMINT_TOKEN (cardmint token create --role admin)".into())
    })?;
    plan.sku = sku.unwrap_or_else(|| {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        format!("RS-{secs}-{}", std::process::id())
    });
    plan.request_id = request_id.unwrap_or_else(|| format!("{}-redeem", plan.sku));
    plan.validate()?;
    Ok(Some(Args {
        server,
        token,
        timeout: Duration::from_secs(timeout),
        plan,
    }))
}

async fn run(args: Args) -> Result<(), Error> {
    let mut clients = connect(&args.server, &args.token, args.timeout).await?;
    println!("connected server={}", args.server);
    let outcome = demo::run(&mut clients, &args.plan).await?;
    println!(
        "ok product={} lot={} cards={} bound={} balance={}",
        outcome.product_id,
        outcome.lot_id,
        outcome.serials.len(),
        outcome.bound_serial,
        outcome.card_balance
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1), |k| std::env::var(k).ok()) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("cardmint-rs-demo: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // One thread is plenty for a handful of sequential calls.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cardmint-rs-demo: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cardmint-rs-demo: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str], env: &[(&str, &str)]) -> Result<Option<Args>, Error> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        parse(argv.iter().map(|a| (*a).to_owned()), move |k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn token_and_server_from_the_environment_flags_win() {
        let a = args(
            &["--sku", "RS-9"],
            &[("CARDMINT_TOKEN", "t1"), ("CARDMINT_SERVER", "h:1")],
        )
        .expect("valid")
        .expect("not help");
        assert_eq!((a.server.as_str(), a.token.as_str()), ("h:1", "t1"));
        assert_eq!(a.plan.sku, "RS-9");
        assert_eq!(a.plan.request_id, "RS-9-redeem");
        let a = args(
            &["--server", "h:2", "--token", "t2"],
            &[("CARDMINT_TOKEN", "t1")],
        )
        .expect("valid")
        .expect("not help");
        assert_eq!((a.server.as_str(), a.token.as_str()), ("h:2", "t2"));
        assert!(a.plan.sku.starts_with("RS-"));
    }

    #[test]
    fn help_and_usage_errors() {
        assert!(matches!(args(&["--help"], &[]), Ok(None)));
        for (argv, env) in [
            (&["--sku", "X"][..], &[][..]),
            (&["--bogus"][..], &[("CARDMINT_TOKEN", "t")][..]),
            (&["--count"][..], &[("CARDMINT_TOKEN", "t")][..]),
            (&["--count", "ten"][..], &[("CARDMINT_TOKEN", "t")][..]),
            (&["--timeout", "0"][..], &[("CARDMINT_TOKEN", "t")][..]),
            (&["--redeem", "20000"][..], &[("CARDMINT_TOKEN", "t")][..]),
        ] {
            assert!(matches!(args(argv, env), Err(Error::Usage(_))), "{argv:?}");
        }
    }
}
