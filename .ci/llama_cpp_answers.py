"""Exit 0 when llama.cpp (llama-cpp-python) answers a short chat prompt with the default model, in a process of its
own: a build with kernels this CPU can't run dies here (SIGILL, SIGSEGV), not in the test suite."""

import subprocess
import sys

CHECK = """
from llama_cpp import Llama
from tunelab.models.registry import ALIASES, DEFAULT_MODEL
llm = Llama(model_path=str(ALIASES[DEFAULT_MODEL].path()), n_ctx=256, verbose=False)
out = llm.create_chat_completion([{"role": "user", "content": "What is the capital of France?"}], max_tokens=8,
                                 temperature=0)
assert out["usage"]["completion_tokens"] > 0, out
"""

if __name__ == "__main__":
    r = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        print(f"llama.cpp check failed (exit {r.returncode}): {r.stderr[-1000:]}")
    sys.exit(r.returncode != 0)
