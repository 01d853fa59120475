//! TUF timestamps. `expires` is `YYYY-MM-DDTHH:MM:SSZ` (UTC); time elsewhere in Hale is seconds
//! since the Unix epoch, passed in by the caller — the core never reads a clock.

/// Seconds since 1970-01-01T00:00:00Z.
pub type UnixTime = i64;

/// Whether something that `expires` then is no longer trusted at `now`: the TUF spec trusts
/// metadata only while its expiration time is higher than the update's start time. The one rule
/// Hale's expiry checks share (metadata and rollback authorizations on the device, staged
/// metadata in the signing tool).
pub fn is_expired(expires: UnixTime, now: UnixTime) -> bool {
    expires <= now
}

/// The time a device's update check runs at: its `clock`, but never earlier than `floor`, the
/// latest [`crate::TrustedSet::time_passed`] it has kept. A clock set back (a fault, a reset
/// real-time clock, time spoofed on the network) cannot make metadata or a rollback
/// authorization good again once the device has seen a time at which it was expired: a verified
/// check's start, or a signed expiry it refused. The floor runs ahead of true time only as far
/// as the clock had at such a check, and never past the expiry of a timestamp the repository
/// signed (so at most a timestamp's lifetime).
pub fn check_time(clock: UnixTime, floor: UnixTime) -> UnixTime {
    clock.max(floor)
}

/// Parse `YYYY-MM-DDTHH:MM:SSZ`. Fractional seconds and other offsets are refused: the spec fixes
/// this one form and two readers must agree.
pub fn parse_expires(s: &[u8]) -> Option<UnixTime> {
    if s.len() != 20 {
        return None;
    }
    // every field has at most 4 digits: 32-bit arithmetic (no 64-bit division on a device)
    let num = |r: core::ops::Range<usize>| -> Option<i32> {
        let mut v = 0i32;
        for &c in s.get(r)? {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i32::from(c - b'0');
        }
        Some(v)
    };
    let sep = |i: usize, c: u8| s.get(i) == Some(&c);
    if !(sep(4, b'-')
        && sep(7, b'-')
        && sep(10, b'T')
        && sep(13, b':')
        && sep(16, b':')
        && sep(19, b'Z'))
    {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || se > 59
    {
        return None;
    }
    Some(i64::from(days_from_civil(y, mo, d)) * 86_400 + i64::from(h * 3600 + mi * 60 + se))
}

/// Write `t` as `YYYY-MM-DDTHH:MM:SSZ` (years 0..=9999).
pub fn format_expires(t: UnixTime, out: &mut [u8; 20]) -> Option<&str> {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        return None;
    }
    let fields = [
        (y, 4usize, 0usize),
        (m, 2, 5),
        (d, 2, 8),
        (secs / 3600, 2, 11),
        (secs / 60 % 60, 2, 14),
        (secs % 60, 2, 17),
    ];
    *out = *b"0000-00-00T00:00:00Z";
    for (v, w, at) in fields {
        let mut v = v;
        for i in (0..w).rev() {
            *out.get_mut(at + i)? = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    core::str::from_utf8(out).ok()
}

fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i32, m: i32) -> i32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's civil-date algorithms. Years 0..=9999: days fit 32 bits.
fn days_from_civil(y: i32, m: i32, d: i32) -> i32 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_round_trip() {
        assert_eq!(parse_expires(b"1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_expires(b"2030-01-01T00:00:00Z"), Some(1_893_456_000));
        assert_eq!(parse_expires(b"2024-02-29T23:59:59Z"), Some(1_709_251_199));
        let mut b = [0u8; 20];
        assert_eq!(
            format_expires(1_709_251_199, &mut b),
            Some("2024-02-29T23:59:59Z")
        );
    }

    #[test]
    fn refuses_other_forms() {
        for bad in [
            &b"2023-02-29T00:00:00Z"[..],
            b"2030-01-01T00:00:00.5Z",
            b"2030-01-01T00:00:00+00:00",
            b"2030-13-01T00:00:00Z",
            b"2030-01-01 00:00:00Z",
            b"2030-01-01T24:00:00Z",
            b"+030-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_expires(bad), None, "{:?}", core::str::from_utf8(bad));
        }
    }
}
