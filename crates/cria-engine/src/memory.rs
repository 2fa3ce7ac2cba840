//! How much memory is left, and the context size that fits in it: the KV cache of a context is
//! the one allocation that grows with a setting (`--ctx-size`), so it is sized here, before a
//! session allocates it.

use cria_core::Error;

/// Memory the process can still use: `MemAvailable` from /proc/meminfo, lowered to what the
/// cgroup (v2) limit leaves, if any. None off Linux or when nothing can be read.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = |key: &str| -> Option<u64> {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|k| k * 1024)
    };
    let avail = kb("MemAvailable:").or_else(|| {
        // Kernels before 3.14: free plus the page cache, which can be reclaimed.
        Some(kb("MemFree:")? + kb("Cached:").unwrap_or(0) + kb("Buffers:").unwrap_or(0))
    })?;
    let read_u64 = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let cgroup_left = match (
        read_u64("/sys/fs/cgroup/memory.max"),
        read_u64("/sys/fs/cgroup/memory.current"),
    ) {
        (Some(max), Some(cur)) => Some(max.saturating_sub(cur)),
        _ => None,
    };
    Some(cgroup_left.map_or(avail, |c| c.min(avail)))
}

/// The context size when nothing is known about free memory.
const CTX_UNKNOWN_MEMORY: usize = 4096;

/// The context size to allocate: `requested` (`--ctx-size`) when given (0 is an error); else
/// the model's training context, cut to what a KV cache of `kv_bytes_per_token` per token fits
/// in half the available memory, rounded down to a multiple of 256 and at least 512 (or the
/// training context if smaller). Returns the size and a one-line explanation for the load
/// message, e.g. "ctx 8192 (model trained on 131072; KV cache 256 MiB; 12.3 GiB free)".
pub fn choose_ctx_size(
    train_ctx: usize,
    kv_bytes_per_token: usize,
    requested: Option<usize>,
) -> cria_core::Result<(usize, String)> {
    choose_ctx_size_with(train_ctx, kv_bytes_per_token, requested, available_memory())
}

fn mib(b: u128) -> String {
    let m = b as f64 / (1u64 << 20) as f64;
    if m >= 1024.0 {
        format!("{:.1} GiB", m / 1024.0)
    } else {
        format!("{m:.0} MiB")
    }
}

fn choose_ctx_size_with(
    train_ctx: usize,
    kv_bytes_per_token: usize,
    requested: Option<usize>,
    available: Option<u64>,
) -> cria_core::Result<(usize, String)> {
    let kv = |n: usize| mib(n as u128 * kv_bytes_per_token as u128);
    let free = available.map(|a| format!("{} free", mib(a as u128)));
    let trained = if train_ctx > 0 {
        format!("model trained on {train_ctx}")
    } else {
        "training context unknown".to_string()
    };
    if let Some(n) = requested {
        if n == 0 {
            return Err(Error::msg("--ctx-size must be at least 1 token"));
        }
        let mut notes = vec![
            format!("--ctx-size; {trained}"),
            format!("KV cache {}", kv(n)),
        ];
        if train_ctx > 0 && n > train_ctx {
            notes.push("beyond the training context: quality may drop".into());
        }
        // A context whose KV cache cannot fit is refused here, not by the allocator's abort.
        if let Some(a) = available {
            let per_token = kv_bytes_per_token.max(1) as u128;
            if n as u128 * per_token > a as u128 {
                return Err(Error::msg(format!(
                    "--ctx-size {n} needs a KV cache of {} but {} is free: at most {} tokens fit",
                    kv(n),
                    mib(a as u128),
                    a as u128 / per_token
                )));
            }
        }
        return Ok((n, format!("ctx {n} ({})", notes.join("; "))));
    }
    let Some(avail) = available else {
        let cap = if train_ctx > 0 {
            train_ctx.min(CTX_UNKNOWN_MEMORY)
        } else {
            CTX_UNKNOWN_MEMORY
        };
        return Ok((
            cap,
            format!(
                "ctx {cap} ({trained}; KV cache {}; free memory unknown, capped at {CTX_UNKNOWN_MEMORY})",
                kv(cap)
            ),
        ));
    };
    let train = if train_ctx > 0 {
        train_ctx
    } else {
        CTX_UNKNOWN_MEMORY
    };
    let fits = (avail / 2)
        .checked_div(kv_bytes_per_token as u64)
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let floor = train.min(512);
    let (ctx, how) = if fits >= train {
        (train, String::new())
    } else {
        let n = (fits / 256 * 256).max(floor);
        (n, ", cut to fit half the free memory".to_string())
    };
    Ok((
        ctx,
        format!(
            "ctx {ctx} ({trained}{how}; KV cache {}; {})",
            kv(ctx),
            free.unwrap_or_default()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn ctx_fits_training_context() {
        // SmolLM2-135M: 30 layers x 3 kv heads x 64 x 2 (K, V) x 2 bytes (f16) = 23040 B/token.
        let (n, why) = choose_ctx_size_with(8192, 23040, None, Some(8 * GIB)).unwrap();
        assert_eq!(n, 8192);
        assert_eq!(
            why,
            "ctx 8192 (model trained on 8192; KV cache 180 MiB; 8.0 GiB free)"
        );
    }

    #[test]
    fn ctx_cut_by_memory() {
        // Llama-3.2-1B-like: 16 layers x 8 kv heads x 64 x 2 x 2 = 32 KiB/token; 1 GiB free
        // gives 512 MiB of KV = 16384 tokens, well under the 131072 trained.
        let (n, why) = choose_ctx_size_with(131072, 32768, None, Some(GIB)).unwrap();
        assert_eq!(n, 16384);
        assert!(why.contains("cut to fit half the free memory"), "{why}");
        assert!(why.contains("KV cache 512 MiB"), "{why}");
        // Not a multiple of 256: rounded down.
        let (n, _) = choose_ctx_size_with(131072, 32768, None, Some(GIB + 10 * 32768 * 2)).unwrap();
        assert_eq!(n, 16384);
        let (n, _) =
            choose_ctx_size_with(131072, 32768, None, Some(GIB + 300 * 32768 * 2)).unwrap();
        assert_eq!(n, 16384 + 256);
        // Very little memory: still the 512 floor...
        let (n, _) = choose_ctx_size_with(131072, 32768, None, Some(1 << 20)).unwrap();
        assert_eq!(n, 512);
        // ...or the training context when that is smaller.
        let (n, _) = choose_ctx_size_with(256, 32768, None, Some(1 << 20)).unwrap();
        assert_eq!(n, 256);
    }

    #[test]
    fn ctx_requested_wins() {
        let (n, why) = choose_ctx_size_with(2048, 1024, Some(4096), Some(GIB)).unwrap();
        assert_eq!(n, 4096);
        assert!(why.starts_with("ctx 4096 (--ctx-size"), "{why}");
        assert!(why.contains("beyond the training context"), "{why}");
        let err = choose_ctx_size_with(2048, 1 << 20, Some(2048), Some(GIB)).unwrap_err();
        let want = "--ctx-size 2048 needs a KV cache of 2.0 GiB but 1.0 GiB is free: at most 1024";
        assert!(err.to_string().contains(want), "{err}");
        let err = choose_ctx_size_with(2048, 1024, Some(0), Some(GIB)).unwrap_err();
        assert!(err.to_string().contains("at least 1"), "{err}");
    }

    #[test]
    fn ctx_unknown_memory_or_training() {
        let (n, why) = choose_ctx_size_with(131072, 1024, None, None).unwrap();
        assert_eq!(n, 4096);
        assert!(why.contains("free memory unknown"), "{why}");
        let (n, _) = choose_ctx_size_with(2048, 1024, None, None).unwrap();
        assert_eq!(n, 2048);
        let (n, why) = choose_ctx_size_with(0, 1024, None, Some(64 * GIB)).unwrap();
        assert_eq!(n, 4096);
        assert!(why.contains("training context unknown"), "{why}");
        // A zero per-token size (no KV cache at all) cannot overflow the division.
        assert_eq!(
            choose_ctx_size_with(8192, 0, None, Some(GIB)).unwrap().0,
            8192
        );
    }

    #[test]
    fn meminfo_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            let a = available_memory().expect("MemAvailable on Linux");
            assert!(a > 16 << 20, "{a}");
        }
    }
}
