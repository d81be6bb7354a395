//! AFL++ target: see [`support_fuzz::frame_to_relay`].

fn main() {
    afl::fuzz!(|data: &[u8]| support_fuzz::frame_to_relay(data));
}
