"""Refuse pickles that nest tuples deeper than any real file, before unpickling them.

The C unpickler builds nested containers without recursing, but hashing a
tuple does recurse, in C and without Python's recursion limit: a 41 kB pickle
whose dict key is a tuple nested a million deep kills the interpreter with a
segmentation fault inside `pickle.load`. No try/except can catch that, so the
opcodes are scanned first (pickletools, pure Python, nothing is built) and the
tuple depth of every value is tracked through the stack and the memo. Tuples
are immutable, so the depth a tuple has when it is built is the depth it keeps.
Lists and dicts nest without that danger (their hash is refused at once and
their repr/compare raise RecursionError), so only tuples are counted.
"""

from __future__ import annotations

import pickletools

# Real Keras tokenizer pickles hold tuples two deep at most (defaultdict's reduce args).
MAX_TUPLE_DEPTH = 100

_TUPLE_OPS = frozenset({"TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MARK = -1  # stack sentinel for MARK; real entries are depths >= 0


def _memo_index(argument: object) -> int:
    """A PUT/GET opcode's memo index (pickletools decodes it as an int)."""
    if not isinstance(argument, int):
        raise ValueError(f"memo index {argument!r} is not an integer")
    return int(argument)


def deepest_tuple(data: bytes) -> int:
    """The deepest tuple nesting the pickle would build; ValueError if its opcodes are malformed."""
    stack: list[int] = []
    memo: dict[int, int] = {}
    deepest = 0
    for opcode, argument, _ in pickletools.genops(data):
        name = opcode.name
        if name == "MARK":
            stack.append(_MARK)
            continue
        if name in _PUT_OPS or name == "MEMOIZE":
            if not stack:
                raise ValueError(f"{name} on an empty stack")
            memo[len(memo) if name == "MEMOIZE" else _memo_index(argument)] = stack[-1]
            continue
        popped = _pop_operands(stack, opcode)
        if name in _TUPLE_OPS:
            depth = 1 + max((d for d in popped if d != _MARK), default=0)
            deepest = max(deepest, depth)
            if deepest > MAX_TUPLE_DEPTH:
                return deepest  # enough to refuse; no need to read on
            stack.append(depth)
        elif name in _GET_OPS:
            stack.append(memo.get(_memo_index(argument), 0))
        elif name == "DUP":
            stack.extend(popped * 2)
        else:
            stack.extend([0] * len(opcode.stack_after))
    return deepest


def _pop_operands(stack: list[int], opcode: pickletools.OpcodeInfo) -> list[int]:
    """Pop what `opcode` consumes: down to the topmost MARK if it takes one, plus fixed operands."""
    before = opcode.stack_before
    popped: list[int] = []
    fixed = len(before)
    if pickletools.markobject in before:
        while stack and stack[-1] != _MARK:
            popped.append(stack.pop())
        if not stack:
            raise ValueError(f"{opcode.name} without a MARK")
        stack.pop()
        fixed = before.index(pickletools.markobject)
    if fixed > len(stack):
        raise ValueError(f"{opcode.name} on a stack too short")
    for _ in range(fixed):
        popped.append(stack.pop())
    return popped
