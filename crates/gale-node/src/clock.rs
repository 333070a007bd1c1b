//! The node's wall clock in Unix milliseconds: what records, leases and log
//! lines store. One function, so every plane reads time the same way.

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
