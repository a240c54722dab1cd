//! Products, slots and the category tree, with sorting and search.

use crate::ids::SlotId;
use crate::money::{WON_UNIT, Won};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Longest product or category name accepted (in characters).
pub const NAME_CHARS_MAX: usize = 40;
/// Highest price a product may have. Far above any drink, low enough that
/// sums over a fleet's lifetime cannot overflow.
pub const PRICE_MAX: Won = 1_000_000;
/// Most slots a machine may have.
pub const SLOTS_MAX: usize = 64;
/// Most items a single slot may hold.
pub const SLOT_CAPACITY_MAX: u32 = 1_000;
/// Deepest category path accepted.
pub const CATEGORY_DEPTH_MAX: usize = 4;

/// A category as a path from the root, e.g. `["Drinks", "Coffee"]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CategoryPath(pub Vec<String>);

impl CategoryPath {
    /// Parses `"Drinks > Coffee"` (also accepts `›` and `/` as separators).
    pub fn parse(text: &str) -> CategoryPath {
        CategoryPath(
            text.split(['>', '›', '/'])
                .map(str::trim)
                .filter(|part| !part.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }
}

impl std::fmt::Display for CategoryPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(" › "))
    }
}

/// Longest product code accepted (in ASCII characters).
pub const CODE_CHARS_MAX: usize = 16;

/// What a slot sells.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// What people read; any script (`아메리카노`).
    pub name: String,
    pub price: Won,
    pub category: CategoryPath,
    /// An ASCII code (`COFFEE`) for formats that need one, such as the
    /// DEX audit export. Empty only in slots configured before event
    /// format 2; it is then left out of the encoding, so such a product
    /// encodes exactly as in format 1 (see `Event::format_version`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub code: String,
}

impl Product {
    /// The code formats use: the product's own, or `SLOT-NN` for a slot
    /// configured before products had codes.
    pub fn code_or_slot(&self, slot: SlotId) -> String {
        if self.code.is_empty() {
            format!("SLOT-{:02}", slot.0)
        } else {
            self.code.clone()
        }
    }
}

/// The configuration of one slot as installed or reconfigured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotConfig {
    pub slot: SlotId,
    pub product: Product,
    pub capacity: u32,
}

/// Why a name, price or slot configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("a name must have 1 to {NAME_CHARS_MAX} characters")]
    BadName,
    #[error("a price must be a multiple of 10 won between 10 and {PRICE_MAX}")]
    BadPrice,
    #[error("a slot holds 1 to {SLOT_CAPACITY_MAX} items")]
    BadCapacity,
    #[error("a category has 1 to {CATEGORY_DEPTH_MAX} levels of valid names")]
    BadCategory,
    #[error("slot numbers start at 1 and a machine has at most {SLOTS_MAX} slots")]
    BadSlot,
    #[error(
        "a product code has 1 to {CODE_CHARS_MAX} characters: capital letters A-Z, digits and '-'"
    )]
    BadCode,
}

/// A product code: 1 to `CODE_CHARS_MAX` characters of `A-Z`, `0-9` and `-`.
pub fn validate_code(code: &str) -> Result<(), CatalogError> {
    let allowed = code
        .chars()
        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-');
    if (1..=CODE_CHARS_MAX).contains(&code.len()) && allowed {
        Ok(())
    } else {
        Err(CatalogError::BadCode)
    }
}

pub fn validate_name(name: &str) -> Result<(), CatalogError> {
    let chars = name.chars().count();
    let printable = !name.chars().any(char::is_control);
    if (1..=NAME_CHARS_MAX).contains(&chars) && printable && name.trim() == name {
        Ok(())
    } else {
        Err(CatalogError::BadName)
    }
}

pub fn validate_price(price: Won) -> Result<(), CatalogError> {
    if (WON_UNIT..=PRICE_MAX).contains(&price) && price % WON_UNIT == 0 {
        Ok(())
    } else {
        Err(CatalogError::BadPrice)
    }
}

impl SlotConfig {
    pub fn validate(&self) -> Result<(), CatalogError> {
        if self.slot.0 == 0 || usize::from(self.slot.0) > SLOTS_MAX {
            return Err(CatalogError::BadSlot);
        }
        validate_name(&self.product.name)?;
        validate_price(self.product.price)?;
        // An empty code is a slot configured before codes existed (format
        // 1): still valid when replayed; `decide` asks new ones for a code.
        if !self.product.code.is_empty() {
            validate_code(&self.product.code)?;
        }
        if !(1..=SLOT_CAPACITY_MAX).contains(&self.capacity) {
            return Err(CatalogError::BadCapacity);
        }
        let category = &self.product.category.0;
        if category.is_empty()
            || category.len() > CATEGORY_DEPTH_MAX
            || category.iter().any(|part| validate_name(part).is_err())
        {
            return Err(CatalogError::BadCategory);
        }
        Ok(())
    }
}

/// The default catalog from the original machine (water, coffee, a sports
/// drink, premium coffee, soda, a special drink), named in Korean like the
/// seed's machines, each with its ASCII code; capacity 10 each.
pub fn default_catalog() -> Vec<SlotConfig> {
    let items: [(&str, Won, &str, &str); 6] = [
        ("생수", 450, "음료 > 생수", "WATER"),
        ("커피", 500, "음료 > 커피", "COFFEE"),
        ("이온음료", 550, "음료 > 이온음료", "SPORTS"),
        ("프리미엄 커피", 700, "음료 > 커피", "PREMIUM-COFFEE"),
        ("사이다", 750, "음료 > 탄산", "SODA"),
        ("스페셜 음료", 800, "음료 > 스페셜", "SPECIAL"),
    ];
    items
        .into_iter()
        .zip(1..)
        .map(|((name, price, category, code), slot)| SlotConfig {
            slot: SlotId(slot),
            product: Product {
                name: name.to_owned(),
                price,
                category: CategoryPath::parse(category),
                code: code.to_owned(),
            },
            capacity: 10,
        })
        .collect()
}

/// How to order a product list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortKey {
    Slot,
    Name,
    Price,
}

/// Sorts products in place. Ties fall back to the slot number, so the order
/// is total and stable across runs.
pub fn sort_slots<T, F>(items: &mut [T], key: SortKey, config: F)
where
    F: Fn(&T) -> &SlotConfig,
{
    items.sort_by(|a, b| {
        let (a, b) = (config(a), config(b));
        let primary = match key {
            SortKey::Slot => std::cmp::Ordering::Equal,
            SortKey::Name => a
                .product
                .name
                .to_lowercase()
                .cmp(&b.product.name.to_lowercase()),
            SortKey::Price => a.product.price.cmp(&b.product.price),
        };
        primary.then(a.slot.cmp(&b.slot))
    });
}

/// Case-insensitive substring search over product names and codes (so
/// `coffee` finds `커피`, code `COFFEE`).
pub fn matches_search(config: &SlotConfig, query: &str) -> bool {
    let query = query.trim().to_lowercase();
    query.is_empty()
        || config.product.name.to_lowercase().contains(&query)
        || config.product.code.to_lowercase().contains(&query)
}

/// The category tree: each node lists the slots filed directly under it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CategoryNode {
    pub name: String,
    pub slots: Vec<SlotId>,
    pub children: BTreeMap<String, CategoryNode>,
}

impl CategoryNode {
    /// Builds the tree from slot configurations.
    pub fn build<'a>(configs: impl IntoIterator<Item = &'a SlotConfig>) -> CategoryNode {
        let mut root = CategoryNode {
            name: String::from("All"),
            ..CategoryNode::default()
        };
        for config in configs {
            let mut node = &mut root;
            for part in &config.product.category.0 {
                node = node
                    .children
                    .entry(part.clone())
                    .or_insert_with(|| CategoryNode {
                        name: part.clone(),
                        ..CategoryNode::default()
                    });
            }
            node.slots.push(config.slot);
        }
        root
    }

    /// Every slot in this node and below, in slot order.
    pub fn all_slots(&self) -> Vec<SlotId> {
        let mut out = self.slots.clone();
        for child in self.children.values() {
            out.extend(child.all_slots());
        }
        out.sort();
        out
    }

    /// Finds the node at `path` (an empty path is the root).
    pub fn find(&self, path: &CategoryPath) -> Option<&CategoryNode> {
        path.0
            .iter()
            .try_fold(self, |node, part| node.children.get(part))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_catalog_is_valid_and_matches_the_seed() {
        let catalog = default_catalog();
        assert_eq!(catalog.len(), 6);
        for config in &catalog {
            config.validate().unwrap();
        }
        let prices: Vec<Won> = catalog.iter().map(|c| c.product.price).collect();
        assert_eq!(prices, [450, 500, 550, 700, 750, 800]);
        assert!(
            catalog
                .iter()
                .all(|c| validate_code(&c.product.code).is_ok())
        );
    }

    #[test]
    fn codes_are_short_ascii_and_old_products_fall_back_to_the_slot() {
        assert_eq!(validate_code("PREMIUM-COFFEE"), Ok(()));
        for bad in ["", "coffee", "커피", "A B", "ABCDEFGHIJKLMNOPQ"] {
            assert_eq!(validate_code(bad), Err(CatalogError::BadCode), "{bad:?}");
        }
        let mut product = default_catalog().remove(1).product;
        assert_eq!(product.code_or_slot(SlotId(2)), "COFFEE");
        product.code.clear();
        assert_eq!(product.code_or_slot(SlotId(2)), "SLOT-02");
    }

    #[test]
    fn validation_rejects_bad_values() {
        assert_eq!(validate_price(455), Err(CatalogError::BadPrice));
        assert_eq!(validate_price(0), Err(CatalogError::BadPrice));
        assert_eq!(validate_price(PRICE_MAX + 10), Err(CatalogError::BadPrice));
        assert_eq!(validate_name(""), Err(CatalogError::BadName));
        assert_eq!(validate_name(" padded"), Err(CatalogError::BadName));
        assert_eq!(validate_name("tab\there"), Err(CatalogError::BadName));
        assert!(validate_name("아메리카노").is_ok());
        let mut config = default_catalog().remove(0);
        config.capacity = 0;
        assert_eq!(config.validate(), Err(CatalogError::BadCapacity));
        config.capacity = 5;
        config.slot = SlotId(0);
        assert_eq!(config.validate(), Err(CatalogError::BadSlot));
    }

    #[test]
    fn sorts_by_name_and_price_and_searches() {
        let mut catalog = default_catalog();
        sort_slots(&mut catalog, SortKey::Name, |c| c);
        let names: Vec<&str> = catalog.iter().map(|c| c.product.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "사이다",
                "생수",
                "스페셜 음료",
                "이온음료",
                "커피",
                "프리미엄 커피"
            ]
        );
        sort_slots(&mut catalog, SortKey::Price, |c| c);
        assert_eq!(catalog[0].product.name, "생수");
        let found: Vec<&str> = catalog
            .iter()
            .filter(|c| matches_search(c, "커피"))
            .map(|c| c.product.name.as_str())
            .collect();
        assert_eq!(found, ["커피", "프리미엄 커피"]);
        let by_code: Vec<&str> = catalog
            .iter()
            .filter(|c| matches_search(c, "coffee"))
            .map(|c| c.product.name.as_str())
            .collect();
        assert_eq!(
            by_code,
            ["커피", "프리미엄 커피"],
            "the code is searched too"
        );
    }

    #[test]
    fn builds_the_category_tree() {
        let catalog = default_catalog();
        let tree = CategoryNode::build(&catalog);
        let coffee = tree.find(&CategoryPath::parse("음료 › 커피")).unwrap();
        assert_eq!(coffee.slots, [SlotId(2), SlotId(4)]);
        let drinks = tree.find(&CategoryPath::parse("음료")).unwrap();
        assert_eq!(drinks.all_slots().len(), 6);
        assert!(tree.find(&CategoryPath::parse("Snacks")).is_none());
    }
}
