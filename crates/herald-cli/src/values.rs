//! clap value parsers for numbers the user types, shared by every subcommand.
//!
//! They turn a bad value into a clap error (exit status 2, like any other bad flag):
//! `error: invalid value '1e20' for '--timeout <S>': more than 31536000 seconds (365
//! days)`. Nothing downstream then has to deal with values that would panic
//! (`Duration::from_secs_f64` on overflow, `Instant + Duration` past the clock's range)
//! or make no sense (negative, zero, NaN).
//!
//! Flags using them also set `allow_negative_numbers`, so that `--timeout -1` reaches the
//! parser and is reported as a bad value instead of an unknown flag `-1`.

use std::time::Duration;

/// Largest value of a seconds flag: one year. Any timeout, interval or pruning delay
/// beyond that is a typo; it also keeps every `Instant::now() + d` in range.
pub const MAX_SECONDS: u64 = 365 * 24 * 60 * 60;

/// Largest `--rate-limit`: a billion requests per second per source (also keeps the
/// registry's token-bucket arithmetic finite).
pub const MAX_PER_SECOND: f64 = 1e9;

fn number(s: &str, what: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .map_err(|_| format!("not a number of {what}"))
}

/// Parses a positive number of seconds (fractions allowed: `0.25`, `1e-3`) of at most
/// [`MAX_SECONDS`] into a [`Duration`]. Use as `#[arg(value_parser = seconds)]`.
pub fn seconds(s: &str) -> Result<Duration, String> {
    let v = number(s, "seconds")?;
    if v.is_nan() {
        return Err("not a number of seconds".into());
    }
    if v <= 0.0 {
        return Err("must be more than 0 seconds".into());
    }
    // Checked before converting: `try_from_secs_f64` accepts up to u64::MAX seconds,
    // which overflows `Instant::now() + d`. (MAX_SECONDS is exact as an f64.)
    if v > MAX_SECONDS as f64 {
        return Err(format!(
            "more than {MAX_SECONDS} seconds ({} days)",
            MAX_SECONDS / 86_400
        ));
    }
    match Duration::try_from_secs_f64(v) {
        Ok(d) if !d.is_zero() => Ok(d),
        // Positive but below a nanosecond.
        Ok(_) => Err("less than a nanosecond; must be more than 0 seconds".into()),
        Err(e) => Err(format!("not a usable number of seconds ({e})")),
    }
}

/// Parses a positive rate per second of at most [`MAX_PER_SECOND`].
pub fn per_second(s: &str) -> Result<f64, String> {
    let v = number(s, "requests per second")?;
    if v.is_nan() {
        return Err("not a number of requests per second".into());
    }
    if v <= 0.0 {
        return Err("must be more than 0 per second".into());
    }
    if v > MAX_PER_SECOND {
        return Err(format!("more than {MAX_PER_SECOND:e} per second"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_accepts_positive_values_up_to_a_year() {
        assert_eq!(seconds("10"), Ok(Duration::from_secs(10)));
        assert_eq!(seconds("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(seconds("1e-3"), Ok(Duration::from_millis(1)));
        assert_eq!(seconds(" 2 "), Ok(Duration::from_secs(2)));
        assert_eq!(
            seconds(&MAX_SECONDS.to_string()),
            Ok(Duration::from_secs(MAX_SECONDS))
        );
    }

    #[test]
    fn seconds_refuses_what_would_panic_or_make_no_sense() {
        for bad in [
            "1e20", "1e300", "inf", "-inf", "Infinity", "31536001", "nan", "NaN", "-1", "0", "-0",
            "0.0", "1e-12", "", "abc", "10s", "0x10",
        ] {
            let r = seconds(bad);
            assert!(r.is_err(), "{bad:?} gave {r:?}");
        }
        assert_eq!(
            seconds("1e20"),
            Err("more than 31536000 seconds (365 days)".into())
        );
        assert_eq!(seconds("-1"), Err("must be more than 0 seconds".into()));
        assert_eq!(seconds("nan"), Err("not a number of seconds".into()));
    }

    #[test]
    fn per_second_is_positive_and_bounded() {
        assert_eq!(per_second("0.5"), Ok(0.5));
        assert_eq!(per_second("1e9"), Ok(1e9));
        for bad in ["0", "-3", "nan", "inf", "1e308", "1.1e9", "x"] {
            assert!(per_second(bad).is_err(), "{bad:?}");
        }
    }
}
