//! `get_ref`, `get_mut` and `into_inner`, written once for every degrade service (tower-http's
//! `define_inner_service_accessors!`).

/// Writes the inner-service accessors `get_ref`, `get_mut` and `into_inner` in an `impl` block
/// of a service that wraps an inner service. Used by every degrade crate, so each service's
/// accessors read and behave alike; not part of the public API.
///
/// * `inner_service_accessors!(S)`: the inner service of type `S` in the field `inner`;
/// * `inner_service_accessors!(S, field)`: in another field;
/// * `inner_service_accessors!((A, B), (a, b))`: two inner services, returned as a pair.
///
/// ```
/// struct Wrap<S> {
///     inner: S,
/// }
/// impl<S> Wrap<S> {
///     degrade_core::inner_service_accessors!(S);
/// }
///
/// let mut w = Wrap { inner: 1u8 };
/// *w.get_mut() += 1;
/// assert_eq!(*w.get_ref(), 2);
/// assert_eq!(w.into_inner(), 2);
/// ```
#[macro_export]
#[doc(hidden)]
macro_rules! inner_service_accessors {
    ($S:ty) => {
        $crate::inner_service_accessors!($S, inner);
    };
    (($A:ty, $B:ty), ($a:ident, $b:ident)) => {
        /// The two inner services.
        pub fn get_ref(&self) -> (&$A, &$B) {
            (&self.$a, &self.$b)
        }

        /// The two inner services, mutably.
        pub fn get_mut(&mut self) -> (&mut $A, &mut $B) {
            (&mut self.$a, &mut self.$b)
        }

        /// Consumes the wrapper, returning the two inner services.
        pub fn into_inner(self) -> ($A, $B) {
            (self.$a, self.$b)
        }
    };
    ($S:ty, $field:ident) => {
        /// The inner service.
        pub fn get_ref(&self) -> &$S {
            &self.$field
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut $S {
            &mut self.$field
        }

        /// Consumes the wrapper, returning the inner service.
        pub fn into_inner(self) -> $S {
            self.$field
        }
    };
}
