//! The walk-through `cardmint-rs-demo` runs: a product, a lot minted and streamed back, one
//! card bound to an account, a redemption (sent twice with one request id: the second is a
//! replay that moves nothing), and the balances afterwards.
//!
//! Every step prints one line, `WHAT key=value ...`, and checks the answer; the first call
//! that fails or answers something unexpected ends the walk with an [`Error`]. No secret
//! code is printed: only serials and the masked code the server shows.

use tonic::Request;

use crate::pb;
use crate::pb::get_balance_request::Subject;
use crate::{unpack, Clients, Error};

/// What to create and spend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// SKU of the new product (`[A-Za-z0-9._-]{1,64}`, unique on the server).
    pub sku: String,
    /// Account (external id) the first card of the lot is bound to.
    pub account: String,
    /// Cards in the lot.
    pub count: i64,
    /// Face value of each card, in minor units of `currency`.
    pub face_value: i64,
    /// ISO 4217 code of the product's currency.
    pub currency: String,
    /// Amount redeemed from the bound card, in minor units.
    pub redeem: i64,
    /// Idempotency key of the redemption.
    pub request_id: String,
}

/// What the walk-through did, for a caller that checks it further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The product's id.
    pub product_id: i64,
    /// The lot's id.
    pub lot_id: i64,
    /// Serials of the lot's cards, as streamed.
    pub serials: Vec<String>,
    /// Serial of the card bound to the account.
    pub bound_serial: String,
    /// The redemption's transaction id.
    pub transaction_id: i64,
    /// The card's balance at the end, in minor units.
    pub card_balance: i64,
    /// The account's balance in the plan's currency at the end, in minor units.
    pub account_balance: i64,
}

impl Plan {
    /// Checks what the server would refuse anyway, so the mistake is reported before any call.
    pub fn validate(&self) -> Result<(), Error> {
        let sku_ok = !self.sku.is_empty()
            && self.sku.len() <= 64
            && self
                .sku
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !sku_ok {
            return Err(Error::Usage(format!(
                "sku {:?}: 1-64 of A-Z a-z 0-9 . _ -",
                self.sku
            )));
        }
        if self.account.is_empty() {
            return Err(Error::Usage("the account must not be empty".into()));
        }
        if !(1..=100_000).contains(&self.count) {
            return Err(Error::Usage("count: 1-100000 cards".into()));
        }
        if self.face_value < 1 || !(1..=self.face_value).contains(&self.redeem) {
            return Err(Error::Usage(
                "amounts: face value >= 1 and 1 <= redeem <= face value (minor units)".into(),
            ));
        }
        if self.request_id.is_empty() {
            return Err(Error::Usage("the request id must not be empty".into()));
        }
        Ok(())
    }
}

/// Runs the walk-through, printing one line per step.
pub async fn run(c: &mut Clients, plan: &Plan) -> Result<Outcome, Error> {
    plan.validate()?;

    // 1. A product with one denomination.
    let product = c
        .catalog
        .create_product(Request::new(pb::CreateProductRequest {
            sku: plan.sku.clone(),
            name: format!("Rust client demo {}", plan.sku),
            currency: plan.currency.clone(),
            denominations: vec![plan.face_value],
            validity_days: Some(365),
            delivery: pb::Delivery::Auto.into(),
            ..Default::default()
        }))
        .await
        .map_err(|s| Error::Call("CatalogService.CreateProduct", s))?
        .into_inner();
    expect(product.sku == plan.sku, || {
        format!("product sku {:?}, asked {:?}", product.sku, plan.sku)
    })?;
    let denominations: Vec<String> = product.denominations.iter().map(i64::to_string).collect();
    println!(
        "product sku={} id={} currency={} denominations={}",
        product.sku,
        product.id,
        product.currency,
        denominations.join(",")
    );

    // 2. Mint a lot; the server streams its progress and, last, the finished lot.
    let mut progress = c
        .lots
        .create_lot(Request::new(pb::CreateLotRequest {
            sku: plan.sku.clone(),
            count: plan.count,
            face_value_minor_units: plan.face_value,
            // Idempotent: a retry of this demo's mint answers the same lot.
            request_id: format!("{}-lot", plan.request_id),
        }))
        .await
        .map_err(|s| Error::Call("LotService.CreateLot", s))?
        .into_inner();
    let mut updates = 0u64;
    let mut lot = None;
    while let Some(p) = progress
        .message()
        .await
        .map_err(|s| Error::Call("LotService.CreateLot", s))?
    {
        updates += 1;
        expect(p.done <= p.total && p.total == plan.count, || {
            format!(
                "progress {}/{} for a lot of {}",
                p.done, p.total, plan.count
            )
        })?;
        if p.lot.is_some() {
            lot = p.lot;
        }
    }
    let lot = lot.ok_or_else(|| Error::Unexpected("CreateLot ended without the lot".into()))?;
    expect(
        lot.status() == pb::LotStatus::Complete && lot.count == plan.count,
        || {
            format!(
                "lot {} is {:?} with {} cards",
                lot.id,
                lot.status(),
                lot.count
            )
        },
    )?;
    let face = lot.face_value.clone().unwrap_or_default();
    println!(
        "lot id={} count={} face_value={} currency={} progress_messages={}",
        lot.id, lot.count, face.minor_units, face.currency, updates
    );

    // 3. Stream the codes back: chunks of packed serials and codes.
    let mut chunks = c
        .lots
        .stream_lot(Request::new(pb::StreamLotRequest { lot_id: lot.id }))
        .await
        .map_err(|s| Error::Call("LotService.StreamLot", s))?
        .into_inner();
    let (mut serials, mut codes) = (Vec::new(), Vec::new());
    let mut n_chunks = 0u64;
    while let Some(chunk) = chunks
        .message()
        .await
        .map_err(|s| Error::Call("LotService.StreamLot", s))?
    {
        n_chunks += 1;
        let s = unpack(&chunk.serials.unwrap_or_default())?;
        let k = unpack(&chunk.codes.unwrap_or_default())?;
        expect(s.len() == k.len(), || {
            format!("a chunk of {} serials and {} codes", s.len(), k.len())
        })?;
        serials.extend(s);
        codes.extend(k);
    }
    let streamed = i64::try_from(codes.len()).unwrap_or(i64::MAX);
    expect(streamed == plan.count, || {
        format!("streamed {streamed} codes of a lot of {}", plan.count)
    })?;
    println!("streamed codes={streamed} chunks={n_chunks}");
    for s in &serials {
        println!("card serial={s}");
    }

    // 4. Bind the first card to the account, by its code as a person would type it.
    let (serial, code) = match (serials.first(), codes.first()) {
        (Some(s), Some(k)) => (s.clone(), k.clone()),
        _ => return Err(Error::Unexpected("an empty lot".into())),
    };
    let bound = c
        .cards
        .bind_card(Request::new(pb::BindCardRequest {
            account: plan.account.clone(),
            code,
            serial: serial.clone(),
        }))
        .await
        .map_err(|s| Error::Call("CardService.BindCard", s))?
        .into_inner();
    let card = bound.card.unwrap_or_default();
    expect(card.serial == serial && card.bound, || {
        format!("bound card {:?} (bound={})", card.serial, card.bound)
    })?;
    println!(
        "bound serial={} account={} masked_code={}",
        card.serial, plan.account, card.masked_code
    );

    // 5. Redeem, then send the very same request again: a replay, nothing more is spent.
    let redeem = pb::RedeemRequest {
        request_id: plan.request_id.clone(),
        serial: serial.clone(),
        amount: Some(pb::Money {
            minor_units: plan.redeem,
            currency: plan.currency.clone(),
        }),
    };
    let left = plan.face_value - plan.redeem;
    let mut first = None;
    for attempt in 0..2 {
        let r = c
            .balances
            .redeem(Request::new(redeem.clone()))
            .await
            .map_err(|s| Error::Call("BalanceService.Redeem", s))?
            .into_inner();
        let after = r.balance_after.clone().unwrap_or_default();
        expect(
            r.replayed == (attempt == 1) && after.minor_units == left && r.serial == serial,
            || format!("redeem #{} answered {r:?}", attempt + 1),
        )?;
        let tx = *first.get_or_insert(r.transaction_id);
        expect(r.transaction_id == tx, || {
            format!(
                "the replay answered transaction {}, not {tx}",
                r.transaction_id
            )
        })?;
        println!(
            "redeemed serial={} amount={} balance_after={} currency={} transaction={} request_id={} replayed={}",
            r.serial,
            r.amount.unwrap_or_default().minor_units,
            after.minor_units,
            after.currency,
            r.transaction_id,
            plan.request_id,
            r.replayed
        );
    }
    let transaction_id = first.unwrap_or_default();

    // 6. The balances, read back: the card's, and the account's across its cards.
    let card_balance = balance(c, Subject::Serial(serial.clone()), &plan.currency).await?;
    expect(card_balance == left, || {
        format!("card balance {card_balance}, expected {left}")
    })?;
    println!(
        "balance serial={serial} minor_units={card_balance} currency={}",
        plan.currency
    );
    let account_balance =
        balance(c, Subject::Account(plan.account.clone()), &plan.currency).await?;
    expect(account_balance >= left, || {
        format!("account balance {account_balance} is less than its card's {left}")
    })?;
    println!(
        "balance account={} minor_units={account_balance} currency={}",
        plan.account, plan.currency
    );

    Ok(Outcome {
        product_id: product.id,
        lot_id: lot.id,
        serials,
        bound_serial: serial,
        transaction_id,
        card_balance,
        account_balance,
    })
}

/// The balance of a card or an account in `currency` (0 when it holds none of it).
async fn balance(c: &mut Clients, subject: Subject, currency: &str) -> Result<i64, Error> {
    let got = c
        .balances
        .get_balance(Request::new(pb::GetBalanceRequest {
            subject: Some(subject),
            required: None,
        }))
        .await
        .map_err(|s| Error::Call("BalanceService.GetBalance", s))?
        .into_inner();
    Ok(got
        .balances
        .iter()
        .filter(|m| m.currency == currency)
        .map(|m| m.minor_units)
        .sum())
}

fn expect(ok: bool, why: impl FnOnce() -> String) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(Error::Unexpected(why()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            sku: "RS-1".into(),
            account: "alice".into(),
            count: 5,
            face_value: 10_000,
            currency: "CNY".into(),
            redeem: 2_500,
            request_id: "rs-1".into(),
        }
    }

    #[test]
    fn a_sensible_plan_passes() {
        assert!(plan().validate().is_ok());
    }

    #[test]
    fn bad_plans_are_refused_before_any_call() {
        let cases: [fn(&mut Plan); 7] = [
            |p| p.sku = "has space".into(),
            |p| p.sku = "x".repeat(65),
            |p| p.account.clear(),
            |p| p.count = 0,
            |p| p.redeem = p.face_value + 1,
            |p| p.redeem = 0,
            |p| p.request_id.clear(),
        ];
        for change in cases {
            let mut p = plan();
            change(&mut p);
            assert!(matches!(p.validate(), Err(Error::Usage(_))), "{p:?}");
        }
    }
}
