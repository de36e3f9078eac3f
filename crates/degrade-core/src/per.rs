//! [`PerLevel`] and [`PerPriority`]: one value for each [`Level`] or [`Priority`], indexed by
//! the level or priority itself. What a bare `[T; 5]` meant, with the meaning in the type and
//! no `level.index()` at every use.

use crate::{Level, Priority};
use std::ops::{Index, IndexMut};

macro_rules! per_key_map {
    ($(#[$doc:meta])* $name:ident, $key:ident, $example:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name<T>([T; 5]);

        impl<T> $name<T> {
            #[doc = concat!("The values in `", stringify!($key), "::ALL` order (lowest first).")]
            ///
            /// ```
            #[doc = concat!("use degrade_core::{", stringify!($name), ", ", stringify!($key), "};")]
            #[doc = concat!("let m = ", stringify!($name), "::new([0, 1, 2, 3, 4]);")]
            #[doc = concat!("assert_eq!(m[", stringify!($key), "::ALL[3]], 3);")]
            /// ```
            pub const fn new(values: [T; 5]) -> Self {
                Self(values)
            }

            #[doc = concat!("The value of each ", $example, " from `f`.")]
            ///
            /// ```
            #[doc = concat!("use degrade_core::{", stringify!($name), ", ", stringify!($key), "};")]
            #[doc = concat!("let m = ", stringify!($name), "::from_fn(|k: ", stringify!($key), "| k.index() * 10);")]
            #[doc = concat!("assert_eq!(m[", stringify!($key), "::ALL[4]], 40);")]
            /// ```
            pub fn from_fn(mut f: impl FnMut($key) -> T) -> Self {
                Self($key::ALL.map(|k| f(k)))
            }

            #[doc = concat!("Each ", $example, " with its value, lowest first.")]
            ///
            /// ```
            #[doc = concat!("use degrade_core::{", stringify!($name), ", ", stringify!($key), "};")]
            #[doc = concat!("let m = ", stringify!($name), "::new([1, 1, 1, 1, 5]);")]
            #[doc = concat!("let (top, v) = m.iter().last().unwrap();")]
            #[doc = concat!("assert_eq!((top, *v), (", stringify!($key), "::ALL[4], 5));")]
            /// ```
            pub fn iter(&self) -> impl Iterator<Item = ($key, &T)> {
                $key::ALL.into_iter().zip(self.0.iter())
            }

            /// The values, lowest first.
            ///
            /// ```
            #[doc = concat!("use degrade_core::", stringify!($name), ";")]
            #[doc = concat!("assert_eq!(", stringify!($name), "::new([1, 2, 3, 4, 5]).values().iter().sum::<i32>(), 15);")]
            /// ```
            pub const fn values(&self) -> &[T; 5] {
                &self.0
            }

            /// The same map with `f` applied to every value.
            ///
            /// ```
            #[doc = concat!("use degrade_core::", stringify!($name), ";")]
            #[doc = concat!("let m = ", stringify!($name), "::new([1, 2, 3, 4, 5]).map(|v| v * 2);")]
            /// assert_eq!(m.values(), &[2, 4, 6, 8, 10]);
            /// ```
            pub fn map<U>(self, f: impl FnMut(T) -> U) -> $name<U> {
                $name(self.0.map(f))
            }
        }

        impl<T> Index<$key> for $name<T> {
            type Output = T;
            #[inline]
            fn index(&self, key: $key) -> &T {
                &self.0[key.index()]
            }
        }

        impl<T> IndexMut<$key> for $name<T> {
            #[inline]
            fn index_mut(&mut self, key: $key) -> &mut T {
                &mut self.0[key.index()]
            }
        }

        impl<T> From<[T; 5]> for $name<T> {
            fn from(values: [T; 5]) -> Self {
                Self(values)
            }
        }
    };
}

per_key_map!(
    /// One value per [`Level`], indexed by the level.
    ///
    /// ```
    /// use degrade_core::{Level, PerLevel};
    ///
    /// // The sampling ratio at each level.
    /// let mut ratio = PerLevel::new([1.0, 0.5, 0.1, 0.01, 0.0]);
    /// assert_eq!(ratio[Level::Moderate], 0.1);
    /// ratio[Level::Emergency] = 0.001;
    /// assert_eq!(ratio.iter().filter(|(_, r)| **r < 0.5).count(), 3);
    /// ```
    PerLevel,
    Level,
    "level"
);

per_key_map!(
    /// One value per [`Priority`], indexed by the priority.
    ///
    /// ```
    /// use degrade_core::{PerPriority, Priority};
    ///
    /// // Requests shed per priority.
    /// let mut shed = PerPriority::<u64>::default();
    /// shed[Priority::Low] += 3;
    /// shed[Priority::Background] += 7;
    /// assert_eq!(shed.values().iter().sum::<u64>(), 10);
    /// assert_eq!(shed[Priority::Critical], 0);
    /// ```
    PerPriority,
    Priority,
    "priority"
);
