//! AFL++ target: see [`support_fuzz::hello`].

fn main() {
    afl::fuzz!(|data: &[u8]| support_fuzz::hello(data));
}
