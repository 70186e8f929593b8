"""Code for a child process that records every import made outside the main thread, in ``seen``.

Put it first in the child's script; the script then prints ``sorted(set(seen))``. Threads that import while
the main thread does can hang for good after a Ctrl-C, so memgpt's helper threads must import nothing.
"""

WATCH_THREAD_IMPORTS = """
import sys, threading

seen = []


class Watch:
    def find_spec(self, name, path=None, target=None):
        if threading.current_thread() is not threading.main_thread():
            seen.append(f"{threading.current_thread().name}: {name}")
        return None


sys.meta_path.insert(0, Watch())
"""
