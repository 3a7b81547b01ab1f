"""Run llama.cpp's ``convert_hf_to_gguf.py`` with the random tokenizer's pre-tokenizer registered.

    python scripts/reference/convert.py PATH/TO/convert_hf_to_gguf.py HF_DIR [converter args...]

The converter recognises a BPE pre-tokenizer by the sha256 of the token ids it gets for a
fixed text (``get_vocab_base_pre``); a new tokenizer is registered there by
``convert_hf_to_gguf_update.py``, which edits the converter. This wrapper registers the
reference model's tokenizer without editing it: the method is wrapped so that the hashes in
``REGISTERED`` answer their pre-tokenizer name, and everything else goes to the original.
"""

from __future__ import annotations

import runpy
import sys
from hashlib import sha256
from pathlib import Path

# sha256 of str(tokenizer.encode(chktxt)) -> llama.cpp pre-tokenizer name
REGISTERED = {
    # scripts/reference/build_model.py's tokenizer: LFM2's split regex + byte-level BPE
    "a035d477a91b23591be2827b692e208488e2b43ec75b70c6aed1ae43f0501142": "lfm2",
}


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: convert.py CONVERTER HF_DIR [args...]")
    converter = Path(sys.argv[1]).resolve()
    sys.path.insert(0, str(converter.parent))
    from conversion import base  # the converter's own package

    original = base.TextModel.get_vocab_base_pre
    chktxt_holder: dict[str, str] = {}

    def get_vocab_base_pre(self, tokenizer) -> str:  # type: ignore[no-untyped-def]
        chktxt = chktxt_holder.get("text")
        if chktxt is None:
            # the converter's own probe text, read from its source (not copied here)
            import inspect

            src = inspect.getsource(original)
            start = src.index("chktxt = ") + len("chktxt = ")
            chktxt = eval(src[start : src.index("\n", start)])  # a string literal
            chktxt_holder["text"] = chktxt
        chkhsh = sha256(str(tokenizer.encode(chktxt)).encode()).hexdigest()
        if chkhsh in REGISTERED:
            return REGISTERED[chkhsh]
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            sys.stderr.write(f"convert.py: pre-tokenizer hash {chkhsh} is not registered\n")
            raise

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre  # type: ignore[method-assign]
    sys.argv = [str(converter), *sys.argv[2:]]
    runpy.run_path(str(converter), run_name="__main__")


if __name__ == "__main__":
    main()
