//! A device named on the command line by its id or by its name
//! (`support operator run laptop-anna disk-usage`, `support relay
//! remove-device laptop-anna`), and the rule for names the admin gives.
//!
//! An exact device id wins; otherwise the one device with that name. Two
//! devices with the name, or none, is a usage error (exit 2) that lists
//! what there is to choose from.

use crate::Error;
use crate::text::printable;

/// The most characters in a device name.
pub(crate) const MAX_NAME_CHARS: usize = 64;

/// Whether `s` has the shape of a device id: `d-` and 20 lowercase hex
/// digits (see [`crate::PublicKey::device_id`]). Such an argument is taken
/// as an id without asking for the device list.
pub(crate) fn is_device_id(s: &str) -> bool {
    s.strip_prefix("d-").is_some_and(|h| h.len() == 20 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// The id of the device `given` names among `devices` (id, name).
///
/// # Errors
/// [`Error::Usage`] when `given` is no device's id and two or more devices
/// have it as their name (the message lists each id and name), or none does.
pub(crate) fn resolve<'a>(given: &str, devices: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<String, Error> {
    let devices: Vec<(&str, &str)> = devices.into_iter().collect();
    if devices.iter().any(|(id, _)| *id == given) {
        return Ok(given.to_string());
    }
    let named: Vec<&(&str, &str)> = devices.iter().filter(|(_, name)| *name == given).collect();
    match named.as_slice() {
        [(id, _)] => Ok(id.to_string()),
        [] => Err(Error::Usage(format!(
            "no device has the id or name {:?} (support operator devices lists them)",
            printable(given)
        ))),
        several => {
            let list: Vec<String> = several.iter().map(|(id, name)| format!("  {id}  {}", printable(name))).collect();
            Err(Error::Usage(format!(
                "{} devices are named {:?}; give one's id:\n{}",
                several.len(),
                printable(given),
                list.join("\n")
            )))
        }
    }
}

/// `name` as a device's name, if the admin may give it: 1 to
/// [`MAX_NAME_CHARS`] characters, all printable (see [`crate::text`]),
/// not only spaces, and not shaped like a device id (an id always wins).
///
/// # Errors
/// [`Error::Usage`] saying which rule it breaks.
pub(crate) fn check_name(name: &str) -> Result<&str, Error> {
    if name.trim().is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(Error::Usage(format!("a device name is 1 to {MAX_NAME_CHARS} characters, not only spaces")));
    }
    if name.chars().any(crate::text::is_unprintable) {
        return Err(Error::Usage(format!(
            "device name {:?} has control or invisible characters (shown as ?)",
            printable(name)
        )));
    }
    if is_device_id(name) {
        return Err(Error::Usage(format!("{name:?} has the shape of a device id; choose a name that is not")));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "d-00000000000000000001";
    const B: &str = "d-00000000000000000002";

    #[test]
    fn an_id_wins_then_a_unique_name_and_two_alike_are_listed() {
        let devices = [(A, "laptop"), (B, "laptop"), ("d-00000000000000000003", "desk")];
        assert_eq!(resolve(A, devices).unwrap(), A);
        assert_eq!(resolve("desk", devices).unwrap(), "d-00000000000000000003");
        let Err(Error::Usage(m)) = resolve("laptop", devices) else { panic!("ambiguous is a usage error") };
        assert!(m.contains(A) && m.contains(B) && m.starts_with("2 devices"), "{m}");
        assert!(matches!(resolve("nothing", devices), Err(Error::Usage(_))));
        // A name that is another device's id: the id wins.
        assert_eq!(resolve(B, [(A, B), (B, "x")]).unwrap(), B);
    }

    #[test]
    fn names_are_printable_bounded_and_not_ids() {
        assert!(check_name("laptop-anna").is_ok());
        assert!(check_name("Anna's laptop").is_ok());
        for bad in ["", "   ", "a\u{1b}[31m", "x\u{202e}", A, &"n".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(is_device_id(A) && !is_device_id("d-0000") && !is_device_id("D-00000000000000000001"));
    }
}
