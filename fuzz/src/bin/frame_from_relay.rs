//! AFL++ target: see [`support_fuzz::frame_from_relay`].

fn main() {
    afl::fuzz!(|data: &[u8]| support_fuzz::frame_from_relay(data));
}
