//! AFL++ target: see [`support_fuzz::console_request`].

fn main() {
    afl::fuzz!(|data: &[u8]| support_fuzz::console_request(data));
}
