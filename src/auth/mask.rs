//! Masked values, for callers allowed to reconcile but not to learn a customer's
//! other emails and phones (`identify:masked`): enough to recognise a value the
//! customer typed, not to read one they did not.

/// `lorraine@hillvalley.edu` → `l******e@hillvalley.edu`: the first and last
/// character of the local part, the domain as it is.
pub fn email(value: &str) -> String {
    let Some((local, domain)) = value.split_once('@') else {
        return "*".repeat(value.chars().count());
    };
    let chars: Vec<char> = local.chars().collect();
    let masked_local = match chars.as_slice() {
        [] => String::new(),
        [only] => format!("{only}*"),
        [first, middle @ .., last] => {
            format!("{first}{}{last}", "*".repeat(middle.len().max(1)))
        }
    };
    format!("{masked_local}@{domain}")
}

/// `+15550123456` → `**********56`: only the last two digits show.
pub fn phone(value: &str) -> String {
    let count = value.chars().count();
    let shown = count.saturating_sub(2);
    value
        .chars()
        .enumerate()
        .map(|(index, c)| if index < shown { '*' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_what_the_customer_can_recognise() {
        assert_eq!(email("lorraine@hillvalley.edu"), "l******e@hillvalley.edu");
        assert_eq!(email("ab@x.io"), "a*b@x.io");
        assert_eq!(email("a@x.io"), "a*@x.io");
        assert_eq!(phone("123456"), "****56");
        assert_eq!(phone("+15550123456"), "**********56");
        assert_eq!(phone("7"), "7");
        assert!(!email("mcfly@hillvalley.edu").contains("mcfly"));
    }
}
