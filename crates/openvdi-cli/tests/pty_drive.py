#!/usr/bin/env python3
"""Runs a command on a fresh pseudo-terminal and answers its prompts, for
crates/openvdi-cli/tests/terminal.rs.

    pty_drive.py --deadline SECS [--expect PROMPT --send TEXT]... -- COMMAND ARGS...

The command gets the terminal's slave side as stdin, stdout, stderr and
controlling terminal (so /dev/tty is it). For each --expect/--send pair, in
order: wait until PROMPT has appeared in the output since the previous answer
*and* the terminal's ECHO flag is off (the program has hidden the input: typing
before that would be echoed by the line discipline, as for a person typing
ahead), then type TEXT and a newline. Then read until the command exits.

Prints one JSON object on stdout: {"exit": CODE, "output": TEXT, "answered": N}
(CODE is the exit status, or -SIGNAL). Every wait is bounded by --deadline: at
the deadline the command is killed (SIGKILL) and the object says "timeout": true
with the prompt still awaited.
"""

import json
import os
import pty
import select
import signal
import sys
import termios
import time


def main():
    args = sys.argv[1:]
    deadline = 60.0
    pairs = []
    while args and args[0] != "--":
        if args[0] == "--deadline":
            deadline = float(args[1])
            args = args[2:]
        elif args[0] == "--expect" and len(args) >= 4 and args[2] == "--send":
            pairs.append((args[1].encode(), args[3].encode()))
            args = args[4:]
        else:
            sys.exit("usage: pty_drive.py --deadline S [--expect P --send T]... -- CMD...")
    cmd = args[1:]
    if not cmd:
        sys.exit("no command")
    end = time.monotonic() + deadline

    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)

    out = bytearray()
    since = 0  # where the output not yet matched against a prompt begins
    answered = 0
    status = None
    timeout = False
    eof = False

    def echo_off():
        # On Linux the master's TCGETS reports the slave's termios (as pexpect's
        # waitnoecho relies on).
        try:
            return not (termios.tcgetattr(fd)[3] & termios.ECHO)
        except termios.error:
            return False

    while True:
        if answered < len(pairs):
            prompt, text = pairs[answered]
            if prompt in out[since:] and echo_off():
                os.write(fd, text + b"\n")
                since = len(out)
                answered += 1
                continue
        left = end - time.monotonic()
        if left <= 0:
            timeout = True
            break
        if eof:
            # The output is closed; wait for the exit status, bounded.
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
                break
            select.select([], [], [], min(left, 0.02))
            continue
        # A short poll while waiting for ECHO to go off (it changes no fd state).
        r, _, _ = select.select([fd], [], [], min(left, 0.02))
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: every slave fd closed
                chunk = b""
            if not chunk:
                eof = True
                continue
            out += chunk

    if timeout:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, status = os.waitpid(pid, 0)
    os.close(fd)
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
    else:
        code = -os.WTERMSIG(status)
    res = {"exit": code, "output": out.decode("utf-8", "replace"), "answered": answered}
    if timeout:
        res["timeout"] = True
        if answered < len(pairs):
            res["awaiting"] = pairs[answered][0].decode()
    print(json.dumps(res))


if __name__ == "__main__":
    main()
