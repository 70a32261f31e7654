//! `spike operator restore`'s recovery lines (`spike:<i>:<64 hex>`), read
//! from files and prompts. Properties: parsing never panics, and a parsed
//! share formats to a line that parses to the same share and formats the
//! same again.

use spike_sdk::crypto::recovery_line::{format, parse};

fn main() {
    afl::fuzz!(|bytes: &[u8]| {
        let Ok(line) = std::str::from_utf8(bytes) else {
            return;
        };
        let Ok(share) = parse(line) else {
            return;
        };
        let formatted = format(&share);
        let again = parse(&formatted).expect("a formatted line parses");
        assert!(again == share, "a share changed in a round trip");
        assert_eq!(
            formatted.as_str(),
            format(&again).as_str(),
            "formatting is not canonical"
        );
    });
}
