//! My first runner task, written by following the SDK tutorial
//! (`sdk/README.md`): it totals an order.
//!
//! Input: `{"items": [{"name": "りんご", "price": 120, "quantity": 3}], "tax_percent": 10}`
//! (prices in whole yen, `tax_percent` optional, default 0).
//! Output: `{"items": 1, "subtotal": 360, "tax": 36, "total": 396}`.
//!
//! An empty order or a zero quantity fails the job for good (retrying would
//! not help); everything else succeeds. Needs no grant.

use runner_sdk::{Context, TaskError, task};
use serde::{Deserialize, Serialize};

/// One line of the order.
#[derive(Deserialize)]
struct Item {
    name: String,
    /// Unit price in whole yen.
    price: u64,
    quantity: u32,
}

/// The job's input, parsed from JSON.
#[derive(Deserialize)]
struct Order {
    items: Vec<Item>,
    #[serde(default)]
    tax_percent: u32,
}

/// The job's output, stored as JSON.
#[derive(Serialize)]
struct Total {
    items: usize,
    subtotal: u64,
    tax: u64,
    total: u64,
}

#[task]
fn run(ctx: &Context, order: Order) -> Result<Total, TaskError> {
    if order.items.is_empty() {
        return Err(TaskError::fail("the order has no items"));
    }
    if order.tax_percent > 100 {
        return Err(TaskError::fail(format!(
            "tax_percent {} is above 100",
            order.tax_percent
        )));
    }
    let count = order.items.len() as u64;
    let mut subtotal: u64 = 0;
    for (i, item) in order.items.iter().enumerate() {
        if item.quantity == 0 {
            return Err(TaskError::fail(format!(
                "items[{i}] ({}): quantity must be at least 1",
                item.name
            )));
        }
        let line = item
            .price
            .checked_mul(u64::from(item.quantity))
            .and_then(|line| subtotal.checked_add(line))
            .ok_or_else(|| {
                TaskError::fail(format!("items[{i}] ({}): amount too large", item.name))
            })?;
        subtotal = line;
        ctx.progress(i as u64 + 1, count);
    }
    // Tax is rounded down to the yen, as on a Japanese receipt.
    let tax = (u128::from(subtotal) * u128::from(order.tax_percent) / 100) as u64;
    ctx.info(format!(
        "{count} items, subtotal {subtotal}, tax {tax} (attempt {})",
        ctx.job().attempt
    ));
    Ok(Total {
        items: order.items.len(),
        subtotal,
        tax,
        total: subtotal.saturating_add(tax),
    })
}
