//! Commands sent along with a release: they cost no round trip of their
//! own. On one server (or a Sentinel-managed primary) the release script's
//! own text runs as a function inside a script that then runs the
//! commands, so they apply atomically with the release; on a cluster, where
//! they may live in another hash slot, they are sent at the same time as
//! the release, on the connection that pipelines per node.

use redis::Script;

use crate::error::{LockError, Result};
use crate::fence::MAX_EFFECT_ARGS;

/// `inner`, a script of soloist's, wrapped so that the commands sent along
/// run after it in the same call (see `scripts/along.lua`). Built from the
/// script's own text, so the two cannot drift apart.
pub(crate) fn carrying(inner: &str) -> Script {
    composed(&[("inner", inner)], include_str!("scripts/along.lua"))
}

/// A script whose `body` calls other scripts of soloist's as Lua functions
/// (`name(KEYS, ARGV)`), each defined from that script's own text: a
/// script that does what several do, one after another, cannot drift from
/// them.
pub(crate) fn composed(functions: &[(&str, &str)], body: &str) -> Script {
    let mut text = String::new();
    for (name, script) in functions {
        text.push_str(&format!(
            "local function {name}(KEYS, ARGV)\n{script}\nend\n"
        ));
    }
    text.push_str(body);
    Script::new(&text)
}

/// Checks commands to send along before anything is sent: each has a name
/// and fits one script call's stack.
pub(crate) fn check_along(along: &[Vec<Vec<u8>>]) -> Result<()> {
    along
        .iter()
        .try_for_each(|command| check_length(command.len()))
}

/// [`check_along`] for commands kept as built.
pub(crate) fn check_commands(commands: &[redis::Cmd]) -> Result<()> {
    commands
        .iter()
        .try_for_each(|command| check_length(command.args_iter().count()))
}

fn check_length(args: usize) -> Result<()> {
    if args == 0 {
        return Err(LockError::invalid("along", "a command has no name"));
    }
    if args > MAX_EFFECT_ARGS {
        return Err(LockError::invalid(
            "along",
            format!("a command has {args} arguments; at most {MAX_EFFECT_ARGS} fit"),
        ));
    }
    Ok(())
}

/// Appends `inner_args` and `along` to `invocation` as `along.lua` takes them.
pub(crate) fn push_args(
    invocation: &mut redis::ScriptInvocation<'_>,
    inner_args: &[&[u8]],
    along: &[Vec<Vec<u8>>],
) {
    invocation.arg(inner_args.len());
    for arg in inner_args {
        invocation.arg(*arg);
    }
    invocation.arg(along.len());
    for command in along {
        invocation.arg(command.len());
        for arg in command {
            invocation.arg(arg.as_slice());
        }
    }
}
