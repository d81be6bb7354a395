//! AFL++ target: see [`support_fuzz::consent`].

fn main() {
    afl::fuzz!(|data: &[u8]| support_fuzz::consent(data));
}
