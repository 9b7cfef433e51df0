//! Order statistics over a workload's samples.

/// Minimum, quartiles (linear interpolation between order statistics) and maximum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub q1: f64,
    pub median: f64,
    pub q3: f64,
    pub max: f64,
}

/// The `q` quantile (0..=1) of sorted values, interpolating linearly.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = (sorted.len() - 1) as f64 * q;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Summarises the finite samples; `None` when there are none.
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(Summary {
        n: v.len(),
        min: v[0],
        q1: quantile(&v, 0.25),
        median: quantile(&v, 0.5),
        q3: quantile(&v, 0.75),
        max: v[v.len() - 1],
    })
}

/// `value / baseline`, or `None` when the baseline is zero or missing.
pub fn ratio(value: f64, baseline: Option<f64>) -> Option<f64> {
    match baseline {
        Some(b) if b != 0.0 && b.is_finite() && value.is_finite() => Some(value / b),
        _ => None,
    }
}

/// A number with three significant digits (1234 -> "1234", 0.01234 -> "0.0123").
pub fn fmt_sig(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let digits = (2 - x.abs().log10().floor() as i32).max(0);
    format!("{x:.*}", digits as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_interpolate_and_ignore_order() {
        let s = summarize(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.n, 4);
        assert_eq!((s.min, s.max), (1.0, 4.0));
        assert_eq!(s.median, 2.5);
        assert_eq!(s.q1, 1.75);
        assert_eq!(s.q3, 3.25);
    }

    #[test]
    fn one_sample_is_every_statistic() {
        let s = summarize(&[7.5]).unwrap();
        assert_eq!(
            (s.min, s.q1, s.median, s.q3, s.max),
            (7.5, 7.5, 7.5, 7.5, 7.5)
        );
    }

    #[test]
    fn odd_count_median_is_the_middle_value() {
        assert_eq!(summarize(&[9.0, 1.0, 5.0]).unwrap().median, 5.0);
    }

    #[test]
    fn non_finite_samples_are_dropped_and_none_left_is_none() {
        assert_eq!(summarize(&[f64::NAN, 2.0]).unwrap().n, 1);
        assert!(summarize(&[f64::NAN, f64::INFINITY]).is_none());
        assert!(summarize(&[]).is_none());
    }

    #[test]
    fn ratios_need_a_usable_baseline() {
        assert_eq!(ratio(10.0, Some(2.0)), Some(5.0));
        assert_eq!(ratio(10.0, Some(0.0)), None);
        assert_eq!(ratio(10.0, None), None);
    }

    #[test]
    fn numbers_keep_three_significant_digits() {
        assert_eq!(fmt_sig(1234.4), "1234");
        assert_eq!(fmt_sig(21.456), "21.5");
        assert_eq!(fmt_sig(0.012345), "0.0123");
        assert_eq!(fmt_sig(0.0), "0");
    }
}
