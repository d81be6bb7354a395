//! AFL++ target: see [`support_fuzz::control_request`].

fn main() {
    afl::fuzz!(|data: &[u8]| support_fuzz::control_request(data));
}
