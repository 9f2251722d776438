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

    /// An integer sum, exactly (an `i128` does not fit one double).
    pub fn from_i128(v: i128) -> ExactSum {
        let mut s = ExactSum::new();
        let mut rest = v;
        while rest != 0 {
            let part = rest as f64;
            s.add(part);
            rest -= part as i128;
        }
        s
    }

    /// The correctly rounded quotient of the exact sum and `n` (what `avg`
    /// answers): the double nearest to sum / n, ties to even, whatever the
    /// order of the values or their split into partial sums. Rounding the
    /// sum first and dividing after is off by one ulp in about one case
    /// in six.
    pub fn div(&self, n: u64) -> f64 {
        if let Some(s) = self.special {
            return s / n as f64;
        }
        let approx = self.value() / n as f64;
        // Counts beyond 2^53 are not exact doubles; products of huge or
        // tiny quotients are not exact two-products: keep the approximation.
        let nf = n as f64;
        if n == 0 || n > (1 << 53) || !approx.is_normal() || !(approx * nf * 2.0).is_finite() {
            return approx;
        }
        // sign(sum - c·n), exactly.
        let side = |c: f64| -> f64 {
            let mut d = self.clone();
            let hi = c * nf;
            d.add(-hi);
            d.add(-c.mul_add(nf, -hi));
            d.value()
        };
        // The exact quotient lies between two neighbours `lo <= x <= hi`.
        let mut lo = approx;
        while side(lo) < 0.0 {
            lo = lo.next_down();
        }
        let mut hi = lo;
        let mut at_hi = side(hi);
        while at_hi > 0.0 {
            lo = hi;
            hi = hi.next_up();
            at_hi = side(hi);
        }
        if at_hi == 0.0 {
            return hi;
        }
        if side(lo) == 0.0 {
            return lo;
        }
        // Nearer the lower or the upper one: sign(2·sum - (lo + hi)·n).
        let mut d = self.clone();
        d.merge(self);
        for c in [lo, hi] {
            let p = c * nf;
            d.add(-p);
            d.add(-c.mul_add(nf, -p));
        }
        let v = d.value();
        // A tie goes to the even one.
        if v > 0.0 || (v == 0.0 && lo.to_bits() & 1 == 1) {
            hi
        } else {
            lo
        }
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

    #[test]
    fn quotients_are_correctly_rounded() {
        // The expected values are Python's float(sum(Fraction(x)) / n).
        let avg = |xs: &[f64]| {
            let mut s = ExactSum::new();
            xs.iter().for_each(|x| s.add(*x));
            s.div(xs.len() as u64)
        };
        assert_eq!(avg(&[0.1, 0.2, 0.3]), 0.2);
        assert_eq!(avg(&[0.1, 0.1, 0.1]), 0.1);
        assert_eq!(avg(&[1.0, 2.0, 2.0]), 1.6666666666666667);
        assert_eq!(avg(&[1e16, 1.0, 1.0]), 3333333333333334.0);
        let xs = [
            -18.967770730223535,
            16.877590758977945,
            70.87724426017536,
            73.04755173061665,
            69.31434877900168,
            -59.34345484917447,
            63.481308311200195,
            -45.89393049202057,
            -62.61500106039095,
            -89.34827118568353,
            -89.09376659749945,
            82.45930384765089,
            -75.06490148689181,
            -15.025344328433874,
            50.18598140412081,
            72.08485469278241,
            -22.303255187853097,
            13.896597611088339,
            33.31802911458851,
            16.715602495283008,
            73.36258706184023,
            -88.48972766927814,
        ];
        assert_eq!(avg(&xs), 3.1579807490852994);
        assert_eq!(ExactSum::from_i128(i128::MAX).div(1), i128::MAX as f64);
        assert_eq!(ExactSum::from_i128(10).div(4), 2.5);
        assert_eq!(ExactSum::from_i128(-7).div(3), -7.0 / 3.0);
        assert_eq!(ExactSum::new().div(3), 0.0);
    }

    proptest! {
        #[test]
        fn a_quotient_is_the_nearest_double(xs in proptest::collection::vec(-1e6f64..1e6, 1..40)) {
            let mut s = ExactSum::new();
            xs.iter().for_each(|x| s.add(*x));
            let n = xs.len() as u64;
            let q = s.div(n);
            // |sum - c·n| is least at q among q and its neighbours.
            let err = |c: f64| {
                let mut d = s.clone();
                let nf = n as f64;
                let p = c * nf;
                d.add(-p);
                d.add(-c.mul_add(nf, -p));
                d
            };
            let e = err(q);
            for c in [q.next_down(), q.next_up()] {
                // |e| <= |err(c)|: both signs compared exactly.
                let mut plus = err(c);
                plus.merge(&e);
                let mut minus = err(c);
                let mut neg = ExactSum::new();
                e.partials().iter().for_each(|p| neg.add(-p));
                minus.merge(&neg);
                // (c_err - e)(c_err + e) >= 0  <=>  |c_err| >= |e|
                prop_assert!(plus.value() * minus.value() >= 0.0, "{q} vs {c}");
            }
        }

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
