//! AFL++ target: see [`support_fuzz::policy`].

fn main() {
    afl::fuzz!(|data: &[u8]| support_fuzz::policy(data));
}
