//! Exact floating-point summation (Shewchuk's partials, as Python's
//! `math.fsum`): the sum of any number of floats, correctly rounded once at
//! the end, whatever their order or how they were split into partial sums.
//! This is what makes `sum` and `avg` exact to the last bit, locally and
//! across operators.

/// A running exact sum. Merging two is exact too.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExactSum {
    /// Non-overlapping partial sums, increasing in magnitude.
    partials: Vec<f64>,
    /// Set once an infinity or NaN is added; the exact part is then moot.
    special: Option<f64>,
}

impl ExactSum {
    pub fn new() -> ExactSum {
        ExactSum::default()
    }

    pub fn add(&mut self, x: f64) {
        if !x.is_finite() {
            self.special = Some(self.special.map_or(x, |s| s + x));
            return;
        }
        let mut x = x;
        let mut i = 0;
        for j in 0..self.partials.len() {
            let mut y = self.partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                self.partials[i] = lo;
                i += 1;
            }
            x = hi;
        }
        self.partials.truncate(i);
        self.partials.push(x);
    }

    /// Adds everything `other` holds.
    pub fn merge(&mut self, other: &ExactSum) {
        for p in &other.partials {
            self.add(*p);
        }
        if let Some(s) = other.special {
            self.add(s);
        }
    }

    /// The partial sums (to ship a partial state over the network).
    pub fn partials(&self) -> &[f64] {
        &self.partials
    }

    /// The infinity or NaN the sum holds, if any (ships beside the partials).
    pub fn special(&self) -> Option<f64> {
        self.special
    }

    /// Rebuilds a sum from shipped partials.
    pub fn from_partials(parts: &[f64]) -> ExactSum {
        let mut s = ExactSum::new();
        for p in parts {
            s.add(*p);
        }
        s
    }

    /// The correctly rounded sum.
    pub fn value(&self) -> f64 {
        if let Some(s) = self.special {
            return s;
        }
        let p = &self.partials;
        let mut n = p.len();
        if n == 0 {
            return 0.0;
        }
        n -= 1;
        let mut hi = p[n];
        let mut lo = 0.0;
        while n > 0 {
            let x = hi;
            n -= 1;
            let y = p[n];
            hi = x + y;
            let yr = hi - x;
            lo = y - yr;
            if lo != 0.0 {
                break;
            }
        }
        // Round half-even correctly when the rest of the partials would tip it.
        if n > 0 && ((lo < 0.0 && p[n - 1] < 0.0) || (lo > 0.0 && p[n - 1] > 0.0)) {
            let y = lo * 2.0;
            let x = hi + y;
            let yr = x - hi;
            if y == yr {
                hi = x;
            }
        }
        hi
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fsum(xs: &[f64]) -> f64 {
        let mut s = ExactSum::new();
        xs.iter().for_each(|x| s.add(*x));
        s.value()
    }

    #[test]
    fn exact_where_naive_sums_are_not() {
        assert_eq!(fsum(&[0.1; 10]), 1.0);
        assert_eq!(fsum(&[1e100, 1.0, -1e100, 1e-100]), 1.0);
        assert_eq!(fsum(&[1.0, 1e-16, 1e-16]), 1.0000000000000002);
        assert_eq!(fsum(&[]), 0.0);
        assert_eq!(fsum(&[f64::INFINITY, 1.0]), f64::INFINITY);
    }

    proptest! {
        #[test]
        fn order_and_splitting_do_not_matter(xs in proptest::collection::vec(-1e12f64..1e12, 0..60), cut in 0usize..60) {
            let whole = fsum(&xs);
            let mut rev = xs.clone();
            rev.reverse();
            prop_assert_eq!(whole, fsum(&rev));
            let cut = cut.min(xs.len());
            let mut a = ExactSum::new();
            xs[..cut].iter().for_each(|x| a.add(*x));
            let b = ExactSum::from_partials(&{
                let mut b = ExactSum::new();
                xs[cut..].iter().for_each(|x| b.add(*x));
                b.partials().to_vec()
            });
            a.merge(&b);
            prop_assert_eq!(whole, a.value());
        }
    }
}
