//! AFL++ target: see [`support_fuzz::audit_recovery`].

fn main() {
    afl::fuzz!(|data: &[u8]| support_fuzz::audit_recovery(data));
}
