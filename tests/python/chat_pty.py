"""Drives `mgm chat` through a pseudo-terminal, as a person at a terminal would.

Usage: chat_pty.py MGM_BIN IMAGE QUESTION EXPECTED_START -- CHAT_ARGS...

Attaches IMAGE with /image, asks QUESTION and checks that the streamed answer begins with
EXPECTED_START (a shorter greedy answer to the same question; CHAT_ARGS give a long --max-tokens so
the answer is still streaming); presses Ctrl-C mid-answer: the answer stops ("[stopped]") and the
chat goes on; /clear starts over; /exit leaves with status 0. Exits 0 when all holds, 1 otherwise
(the end of the screen is printed).
"""
import os
import pty
import select
import sys
import time

mgm, image, question, expected = sys.argv[1:5]
args = sys.argv[sys.argv.index("--") + 1:]
pid, fd = pty.fork()
if pid == 0:
    os.execv(mgm, [mgm, "chat"] + args)

screen = b""
cursor = 0  # what the checks have consumed of the screen


def pump(timeout):
    """Reads what the terminal shows within `timeout` seconds; False at its end."""
    global screen
    r, _, _ = select.select([fd], [], [], timeout)
    if not r:
        return True
    try:
        data = os.read(fd, 4096)
    except OSError:
        return False
    screen += data
    return bool(data)


def read_until(marker, limit=120.0):
    """Waits until `marker` appears past the cursor, and moves the cursor past it."""
    global cursor
    deadline = time.time() + limit
    while True:
        at = screen.find(marker, cursor)
        if at >= 0:
            cursor = at + len(marker)
            return True
        if time.time() >= deadline or not pump(0.2):
            return screen.find(marker, cursor) >= 0


failures = []


def check(cond, what):
    if not cond:
        failures.append(what)


check(read_until(b"USER: "), "the first prompt")
os.write(fd, f"/image {image}\n".encode())
check(read_until(b"attached"), "/image attaches")
check(read_until(b"USER: "), "prompt after /image")
os.write(fd, question.encode() + b"\n")
check(read_until(b"ASSISTANT: "), "an answer starts")
# Wait until the answer has streamed past the expected start, then Ctrl-C while it runs on.
deadline = time.time() + 120
answer = ""
while time.time() < deadline:
    answer = screen.split(b"ASSISTANT: ", 1)[1].decode("utf-8", "replace")
    if len(answer) > len(expected) + 2 or "USER: " in answer:
        break
    pump(0.2)
check(answer.startswith(expected), f"answer {answer[:80]!r} does not start with {expected!r}")
check("USER: " not in answer, "the answer was still streaming when Ctrl-C came")
os.write(fd, b"\x03")
check(read_until(b"[stopped]"), "Ctrl-C stops the answer")
check(read_until(b"USER: "), "the chat goes on after Ctrl-C")
os.write(fd, b"/clear\n")
check(read_until(b"(new conversation)"), "/clear")
os.write(fd, b"/exit\n")
_, status = os.waitpid(pid, 0)
check(os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"/exit leaves with 0 (status {status})")
if failures:
    print("FAILED:", failures)
    print(screen.decode("utf-8", "replace")[-4000:])
    sys.exit(1)
print("chat checks passed")
