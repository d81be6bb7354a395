//! AFL++ target: see [`support_fuzz::transcript`].

fn main() {
    afl::fuzz!(|data: &[u8]| support_fuzz::transcript(data));
}
