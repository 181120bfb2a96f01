//! Panics of third-party code on malformed input, turned into errors about the input.
//!
//! arrow-ipc, parquet and arrow-rs's C Data Interface import panic on some malformed input (a
//! buffer that points past its message, a type id they do not know, a child count that does not
//! fit the type) instead of returning an error. [`contain`] runs such a call and returns the
//! panic's message as an error; the panic hook stays quiet for it (the message is in the error
//! the user sees), while a panic anywhere else still prints as usual.

use std::any::Any;
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// How many `contain` calls are running on this thread.
    static CONTAINED: Cell<u32> = const { Cell::new(0) };
}

static QUIET_HOOK: Once = Once::new();

/// Runs `f`; a panic inside it becomes `Err(message)`.
pub fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    QUIET_HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if CONTAINED.with(Cell::get) == 0 {
                previous(info);
            }
        }));
    });
    CONTAINED.with(|c| c.set(c.get() + 1));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(c.get() - 1));
    result.map_err(|payload| panic_message(payload.as_ref()).to_string())
}

/// The message a panic was raised with.
pub fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message() {
        assert_eq!(contain(|| 7), Ok(7));
        assert_eq!(contain(|| -> u8 { panic!("bad {}", "input") }), Err("bad input".to_string()));
        // Nested, and the counter comes back down.
        assert_eq!(contain(|| contain(|| -> u8 { panic!("inner") })), Ok(Err("inner".to_string())));
        assert_eq!(CONTAINED.with(Cell::get), 0);
    }
}
