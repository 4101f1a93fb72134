//! Commands sent with a batch call (`claim_all`, `settle_all`), written so
//! that what a command shares with an earlier one of the same call is sent
//! once: a queue batch's commands are the same few commands with a
//! different entry id or outcome, and every argument sent costs the server
//! a string to parse and another for the script to read. Decoded by
//! `scripts/commands.lua`.

use std::collections::HashMap;

/// Writes lists of commands into one call's arguments, each command as the
/// number of an earlier command of the call that it starts like (0 for
/// none), how many of that command's leading arguments it keeps, how many
/// of its own follow, and those.
///
/// The earlier command is the last one written with the same name and
/// first argument (the key, for most commands).
#[derive(Debug, Default)]
pub(crate) struct CommandTable<'a> {
    /// Every command written so far, in the order the script reads them.
    written: Vec<Vec<&'a [u8]>>,
    /// The last command written with a given name and first argument.
    last: HashMap<(&'a [u8], &'a [u8]), usize>,
}

impl<'a> CommandTable<'a> {
    /// Appends `list` to `out`: its length, then each command as above.
    pub(crate) fn write(&mut self, out: &mut redis::Cmd, list: &'a [redis::Cmd]) {
        out.arg(list.len());
        for command in list {
            let args: Vec<&'a [u8]> = args_of(command).collect();
            let base = match args.as_slice() {
                [name, first, ..] => self.last.get(&(*name, *first)).copied(),
                _ => None,
            };
            let (number, kept) = match base {
                Some(at) => (at + 1, shared_prefix(&self.written[at], &args)),
                None => (0, 0),
            };
            out.arg(number).arg(kept).arg(args.len() - kept);
            for arg in &args[kept..] {
                out.arg(*arg);
            }
            if let [name, first, ..] = args.as_slice() {
                self.last.insert((*name, *first), self.written.len());
            }
            self.written.push(args);
        }
    }
}

/// A command's arguments, its name first.
pub(crate) fn args_of(command: &redis::Cmd) -> impl Iterator<Item = &[u8]> {
    command.args_iter().map(|arg| match arg {
        redis::Arg::Simple(bytes) => bytes,
        // Only SCAN-like commands have a cursor argument.
        _ => b"0",
    })
}

/// How many leading arguments `a` and `b` have in common.
fn shared_prefix(a: &[&[u8]], b: &[&[u8]]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> redis::Cmd {
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd
    }

    fn written(out: &redis::Cmd) -> Vec<String> {
        args_of(out)
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect()
    }

    #[test]
    fn a_command_keeps_what_it_shares_with_the_last_like_it() {
        let first = [cmd(&["XACK", "s", "g", "1-0"]), cmd(&["HDEL", "h", "1-0"])];
        let second = [
            cmd(&["XACK", "s", "g", "2-0"]),
            cmd(&["XACK", "t", "g", "3-0"]),
            cmd(&["PING"]),
        ];
        let mut table = CommandTable::default();
        let mut out = redis::cmd("EVALSHA");
        table.write(&mut out, &first);
        table.write(&mut out, &second);
        assert_eq!(
            written(&out),
            [
                "EVALSHA", //
                "2", "0", "0", "4", "XACK", "s", "g", "1-0", //
                "0", "0", "3", "HDEL", "h", "1-0", //
                "3", "1", "3", "1", "2-0", // three kept from command 1
                "0", "0", "4", "XACK", "t", "g", "3-0", // another key
                "0", "0", "1", "PING",
            ]
        );
    }

    #[test]
    fn an_empty_list_is_its_length_alone() {
        let mut table = CommandTable::default();
        let mut out = redis::cmd("EVALSHA");
        table.write(&mut out, &[]);
        assert_eq!(written(&out), ["EVALSHA", "0"]);
    }
}
