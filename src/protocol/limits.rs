//! The link's limits and timings, the same for the relay, the daemon's
//! link and the operator (DESIGN §7).

use std::time::Duration;

/// The largest frame either side accepts, in bytes (1 MiB).
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// WebSocket read buffer per connection (bytes); small, for many idle devices.
const WS_READ_BUFFER: usize = 4 * 1024;

/// The WebSocket limits both sides use (relay, daemon link, operator):
/// 1 MiB per message and frame, a 4 KiB read buffer, writes sent at once.
pub fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(2 * MAX_FRAME_BYTES)
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
}

/// The relay's WebSocket read buffer per connection (bytes). Most of a
/// relay's connections are idle devices, and this buffer is held (and
/// zero-filled) from the start, so it is smaller than the peers': a
/// larger frame still gets room for itself (tungstenite reserves the
/// frame's length), only read in steps of this size from the TLS layer's
/// buffer, which costs a copy, not a system call. 4 KiB here cost
/// 3.5 KiB more per idle connection (issue 15's memory figure).
const RELAY_WS_READ_BUFFER: usize = 512;

/// [`ws_config`] on the relay's side: the same limits, a
/// [`RELAY_WS_READ_BUFFER`] read buffer.
pub fn relay_ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    ws_config().read_buffer_size(RELAY_WS_READ_BUFFER)
}

/// The largest frame read before `hello` (bytes). The largest valid hello
/// is under 1 KiB (keys, signature, token, a 64-byte host name, each
/// byte JSON-escaped at worst; the unit test computes it): this leaves
/// room for fields to come without letting an unauthenticated peer make
/// the relay hold more than a few KiB.
pub const MAX_HELLO_BYTES: usize = 4 * 1024;

/// [`relay_ws_config`] with messages and frames capped at [`MAX_HELLO_BYTES`]:
/// the relay's limits until a peer's `hello` passes.
pub fn hello_ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    relay_ws_config().max_message_size(Some(MAX_HELLO_BYTES)).max_frame_size(Some(MAX_HELLO_BYTES))
}

/// How far `issued_at` may be from the device's clock, either way (seconds).
pub const FRESHNESS_S: i64 = 120;
/// Every peer sends a WebSocket ping this often (DESIGN §7).
pub const PING_EVERY: Duration = Duration::from_secs(20);
/// Nothing heard for this long: the link is dead (DESIGN §7).
pub const DEAD_AFTER: Duration = Duration::from_secs(50);
/// How long one write to a peer may take before the peer is dropped as stuck.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
