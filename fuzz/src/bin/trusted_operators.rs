//! AFL++ target: see [`support_fuzz::trusted_operators`].

fn main() {
    afl::fuzz!(|data: &[u8]| support_fuzz::trusted_operators(data));
}
