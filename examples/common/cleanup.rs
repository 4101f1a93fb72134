//! Deleting what a demo run wrote to Redis, so a demo leaves nothing behind.

use soloist::redis;

/// Deletes every key at `url` whose name contains `marker` (the run's key
/// prefix: it is also inside the names of a stream's dead letters and
/// attempt counts, `{<prefix>…}:dead`), and returns how many there were.
pub(crate) async fn forget(url: &str, marker: &str) -> redis::RedisResult<usize> {
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let pattern = format!("*{marker}*");
    let (mut cursor, mut removed) = (0u64, 0);
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            removed += keys.len();
            redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<()>(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}
