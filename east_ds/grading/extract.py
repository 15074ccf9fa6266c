"""Final-answer extraction and answer-string normalisation (pure stdlib, linear time).

Used by `east_ds.grading`. Everything here is string work: no expression is evaluated. Every scan is
bounded or linear in the input, so a 2 MB response or 50,000 nested braces cannot stall a caller.
"""

from __future__ import annotations

import re

from east_ds.grading.program_syntax import FUNCTION_NAMES, last_program_expression, strip_special_tokens

MAX_ANSWER_CHARS = 1000  # longer answers are compared as strings only
_MAX_BOXED_SCAN = 5000  # a \boxed{...} longer than this is not an answer
_MAX_TRIES = 5  # how many trailing \boxed occurrences we try before giving up


def match_brace(text: str, open_pos: int, limit: int = _MAX_BOXED_SCAN) -> int:
    """Index of the `}` closing the `{` at open_pos, or -1 (unbalanced or longer than limit).

    Escaped braces `\\{` `\\}` do not count. Bounded by `limit` characters, so hostile input stays cheap.
    """
    depth = 0
    end = min(len(text), open_pos + limit)
    i = open_pos
    while i < end:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _boxed_at(text: str, pos: int, cmd_len: int) -> tuple[str, int] | None:
    """Content and end index of the \\boxed starting at pos (`\\boxed{...}` or `\\boxed 5`)."""
    j = pos + cmd_len
    n = len(text)
    while j < n and j < pos + cmd_len + 20 and text[j] in " \t":
        j += 1
    if j < n and text[j] == "{":
        k = match_brace(text, j)
        if k < 0:
            return None
        return text[j + 1 : k], k + 1
    if j == pos + cmd_len:  # `\boxedfoo` is another macro, not `\boxed foo`
        return None
    k = j
    while k < n and k < j + 200 and text[k] not in " \t\n$":
        k += 1
    return (text[j:k], k) if k > j else None


# What may stand between two boxes that together make one answer: punctuation and math delimiters, spacing,
# "and"/"or" (plain, or ending a short \text), at most one word naming what the first box counts
# (`\boxed{3} cats and \boxed{4} dogs`) and a label (`x = \boxed{2} or x = \boxed{3}`). Anything longer is
# prose, and only the last box is the answer.
_P = r"(?:[^\w\\{}=]|\\q?quad|\\[()\[\],;!]|\\text\{\s*,?\s*\})*"
_GAP = re.compile(_P + r"(?:(?:\\text\{\s*[A-Za-z]*\s*\}|[A-Za-z]{2,12})?" + _P
                  + r"(?:\\text\{[^{}]{0,30}\b(?:and|or)\s*\}|\b(?:and|or)\b))?" + _P
                  + r"(?:[A-Za-z](?:_\{?\w{1,3}\}?)?\s*=)?" + _P)
_OR_GAP = re.compile(r"\bor\b")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{}/\\fbox{} of text; adjacent boxes (`\\boxed{1}, \\boxed{2}`) are joined."""
    found: list[tuple[int, str, int, str]] = []  # (start, content, end, joiner to the box on its right)
    hi = len(text)
    for _ in range(_MAX_TRIES):
        pb, pf = text.rfind("\\boxed", 0, hi), text.rfind("\\fbox", 0, hi)
        pos, cmd_len = (pb, 6) if pb >= pf else (pf, 5)
        if pos < 0:
            break
        hi = pos
        got = _boxed_at(text, pos, cmd_len)
        if got is None:
            if found:
                break
            continue
        content, end = got
        joiner = ""
        if found and content.strip() == found[-1][1].strip():  # the same box repeated: one answer
            found[-1] = (pos, found[-1][1], end, found[-1][3])
            continue
        if found:
            gap = text[end : found[-1][0]]
            if len(gap) > 60 or not _GAP.fullmatch(gap):
                break
            joiner = " or " if _OR_GAP.search(gap) else ", "
        found.append((pos, content, end, joiner))
    if not found:
        return None
    return "".join(c + joiner for _, c, _, joiner in reversed(found))  # the joiner leads to the box on the right


_PHRASES = ("final answer is", "the answer is", "answer is:", "answer is", "final answer:", "answer:", "# answer",
            "correct answer is", "correct option is", "correct choice is",
            # the same phrase in the languages models answer in (matched on the lower-cased text)
            "答案是", "答案为", "答案為", "答案：", "答案:", "答えは", "答え：", "정답은", "답은", "답:",
            "réponse est", "réponse :", "réponse:", "la respuesta es", "respuesta:", "a resposta é",
            "resposta:", "die antwort ist", "antwort:", "la risposta è", "risposta:", "ответ:", "ответ —")
# Runs of CJK characters: an answer phrase in Chinese, Japanese or Korean is followed by the answer inside prose
# (`答案：每份应该是 $\frac{2}{5}$ 吨`); the math between the runs is the answer.
_CJK = re.compile(r"[\u3000-\u303f\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uff01-\uff0f\uff1a-\uff20]+")


def _tail(text: str) -> str | None:
    """The answer that follows a phrase such as 'The answer is': a math span, or the rest of the sentence."""
    t = text[:600].lstrip(" :*\t\n：")
    for open_, close in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if t.startswith(open_):
            end = t.find(close, len(open_))
            if end > 0:
                return t[len(open_) : end].strip()
    line = re.split(r"[\n。；]", t, maxsplit=1)[0]
    if _CJK.search(line):
        pieces = [p.strip() for p in _CJK.split(line) if re.search(r"[\d\\]", p)]
        line = pieces[0] if pieces else line
    m = re.search(r"\.(\s|$)|\bI hope\b|,?\s+\b(?:because|since|as it|which|as we)\b", line)
    if m:
        line = line[: m.start()]
    line = line.strip().rstrip(".").strip()
    if len(_PROSE_WORD.findall(_MATH_SPAN.sub(" ", line))) >= 2:
        # prose such as "The volume of $ABCD$ is 120": the value after the last "is", else the last number
        m = None
        for m in re.finditer(r"\b(?:is|are|equals)\s+", line):
            pass
        rest = line[m.end() :].strip() if m else ""
        spans = _MATH_SPAN.findall(rest)
        if spans:
            return spans[-1].strip("$").strip()
        if rest and not _PROSE_WORD.search(rest):
            return rest
        nums = _NUMBER.findall(rest or line)
        if nums:
            return nums[-1].rstrip(",")
        letter = _LONE_CHOICE.search(line)  # "The answer is for sure D, it can't be A or B": the first choice
        return letter.group(0) if letter else (rest or line)
    return line or None


_PROSE_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")
_LONE_CHOICE = re.compile(r"(?<![\w'])[A-E](?![\w'])")
_MATH_SPAN = re.compile(r"\$[^$]{1,300}\$")
_LAST_SPAN = re.compile(r"\$\$([^$]{1,2000})\$\$|\$([^$]{1,1000})\$|\\\((.{1,1000}?)\\\)|\\\[(.{1,2000}?)\\\]", re.S)


def _last_math_span(text: str) -> str | None:
    """Content of the last `$..$` / `\\(..\\)` / `\\[..\\]` of text when no number follows it ("so $x < 3$.")."""
    tail = text[-4000:].replace("\\$", "  ")  # an escaped dollar sign is text, not a delimiter
    last = None
    for m in _LAST_SPAN.finditer(tail):
        last = m
    if last is None or re.search(r"\d", tail[last.end() :]):
        return None
    content = next(g for g in last.groups() if g is not None).strip()
    if not content or len(_PROSE_WORD.findall(re.sub(r"\\[A-Za-z]+(\{[^{}]*\})?", " ", content))) >= 2:
        return None
    return content


_COMMAND_ARG = re.compile(r"\\[A-Za-z]+(?:\{[^{}]{0,100}\})?")


def _whole_answer(text: str) -> str | None:
    """The whole text when it is only an answer (`.75`, `2 500`, `\\dfrac{7}{3}`, `x = 5`, `12 cm`, `Evelyn`): one
    short line whose only words are units or "and"/"or", or a single bare word. Else None."""
    t = text.strip()
    if not t or len(t) > 300 or "\n" in t or "\\boxed" in t or "\\fbox" in t:
        return None
    if re.fullmatch(r"[A-Za-z]{1,20}", t):  # one bare word: a name or a label (`Evelyn`, `LQSX`)
        return t
    if _OTHER_SCRIPT.search(t):  # words of another script (`4000千克`, `67 कमीजें`): prose, not only an answer
        return None
    words = _PROSE_WORD.findall(_COMMAND_ARG.sub(" ", t))
    return t if all(w.lower() in _UNITS or w.lower() in _WHOLE_WORDS for w in words) else None


_OTHER_SCRIPT = re.compile(r"[^\x00-\x7f\u00b0-\u00bf\u00d7\u00f7\u0370-\u03ff\u2000-\u2bff]")
_WHOLE_WORDS = frozenset({"and", "or"}) | FUNCTION_NAMES  # `-1 + sqrt(3)` is an answer, not prose


# Text copied out of JSON without unescaping has every backslash doubled: `\\frac{1}{4}`, `\\left(`.
_DOUBLED_CMD = re.compile(r"(?<!\\)\\\\(?=(?:d?frac|sqrt|left|right|boxed|text|pi|cdot|times|infty|le|ge|leq|geq|"
                          r"neq|in|cup|cap|pm|circ|begin|end|mathrm|mathbf|dfrac|tfrac|quad|qquad|sin|cos|tan|log|"
                          r"ln|alpha|beta|theta|\{|\}|\(|\)|\[|\]|,|!|;|%|\$)(?![A-Za-z]))")
_ANY_DOUBLED = re.compile(r"(?<!\\)\\\\[A-Za-z$%!,;{}()\[\]]")
_SINGLE_CMD = re.compile(r"(?<!\\)\\[A-Za-z(\[{]")


def undouble_backslashes(s: str) -> str:
    """`\\\\frac{1}{4}` -> `\\frac{1}{4}`. When no command is written with a single backslash, every `\\\\` is
    halved (a matrix row break becomes `\\\\` again from `\\\\\\\\`); otherwise only doubled known commands are,
    so a real row break before a letter (`a \\\\ b`) stays."""
    if "\\\\" not in s:
        return s
    if not _SINGLE_CMD.search(s):
        return s.replace("\\\\", "\\") if _ANY_DOUBLED.search(s) else s
    return _DOUBLED_CMD.sub(lambda m: "\\", s)


_NUMBER = re.compile(r"(?<![A-Za-z_])-?\d[\d,]*(?:\.\d+)?(?:/\d+(?:\.\d+)?|[eE][-+]?\d+)?")


def extract_answer(text: str) -> str | None:
    """The final answer of a model response or reference solution, or None when it has none.

    Priority: last \\boxed{}/\\fbox{} (nested braces; `\\boxed 5`), GSM8K `#### N`, the last of
    "final answer is" / "The answer is" / "Answer:" / "# Answer", then the last number of the text.
    Linear time: only str.rfind, bounded brace scans and one regex with no nested quantifiers.
    """
    if not text:
        return None
    if "\x00" in text:
        text = text.replace("\x00", "")
    text = undouble_backslashes(strip_special_tokens(text))
    if text.count("boxed") > text.count("\\boxed"):  # some `boxed` is not `\boxed`: a misspelt box?
        text = _LOOSE_BOX.sub(r"\\boxed", text)
    boxed = last_boxed(text)
    final, box = text.lower().rfind("final answer"), max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if final > box >= 0 and len(_PROSE_WORD.findall(text[box : text.lower().find("final answer", box)])) >= 3:
        # "Final Answer: ... is $10,455$" a few sentences after the last box (which held a step): it wins
        ans = _tail(text[final + 12 :].lstrip(" :*").removeprefix("is").removeprefix("The final answer is"))
        if ans and re.search(r"\d", ans):
            return ans
    if boxed is not None and boxed.strip():
        return boxed.strip()
    pos = text.rfind("####")
    if pos >= 0:
        ans = text[pos + 4 :].strip().split("\n", 1)[0].strip()
        if ans:
            return ans.replace(",", "") if _NUMBER.fullmatch(ans) else ans
    low = text.lower()
    best, blen = -1, 0
    for p in _PHRASES:
        q = low.rfind(p)
        if q > best:
            best, blen = q, len(p)
    if best >= 0:
        ans = _tail(text[best + blen :])
        if ans:
            return ans
    whole = _whole_answer(text)
    if whole is not None:
        return whole
    span = _last_math_span(text)
    if span is not None:
        return span
    program = last_program_expression(text)  # `so x = -1 + sqrt(3)`: the expression, not its last number
    if program is not None:
        return program
    last = None
    for m in _NUMBER.finditer(text):
        last = m.group(0)
    return last.rstrip(",") if last else None


# A misspelt box is still the box: `\beginboxed{5}`, `\mathboxed{5}` (a letter run glued before `boxed{`).
_LOOSE_BOX = re.compile(r"\\[A-Za-z]{1,10}(?<!\\)boxed(?=\s*\{)")


# ---- normalisation -----------------------------------------------------------------------------------------

_TEXT_CMDS = ("\\text", "\\textbf", "\\textit", "\\textrm", "\\textnormal", "\\mbox", "\\mathrm", "\\textsf",
              "\\mathit", "\\mathsf")
_UNICODE = {"\u2212": "-", "\u00d7": "\\times ", "\u00b7": "\\cdot ", "\u00f7": "/", "\u03c0": "\\pi ",
            "\u221a": "\\sqrt", "\u221e": "\\infty ", "\u00b0": "", "\u2264": "\\leq ", "\u2265": "\\geq ",
            "\u2260": "\\neq ", "\u2248": "\\approx ", "\u00a0": " ", "\u2013": "-", "\u2009": " ", "\u202f": " "}
_GLUE = ("\\left", "\\right", "\\bigl", "\\bigr", "\\Bigl", "\\Bigr", "\\big", "\\Big", "\\!", "\\,")
_DROP = ("\\displaystyle", "\\;", "\\:", "\\quad", "\\qquad", "\\limits", "\\$", "$", "\\ ", "~")
_RENAME = (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\cfrac", "\\frac"), ("\\dbinom", "\\binom"),
           ("\\geqslant", "\\geq"), ("\\leqslant", "\\leq"), ("\\ge ", "\\geq "), ("\\le ", "\\leq "),
           ("\\ne ", "\\neq "), (">=", "\\geq "), ("<=", "\\leq "), ("!=", "\\neq "), ("\\lt", "<"), ("\\gt", ">"),
           ("\\mathbb{R}", "(-\\infty, \\infty)"), ("\\emptyset", "\\{\\}"), ("\\varnothing", "\\{\\}"), ("\\mp", "\\pm"), ("\\approx", "="),
           ("\\colon", ":"), ("\\tbinom", "\\binom"), ("\\dots", ""), ("\\ldots", ""), ("\\cdots", ""))
_ORDINAL = re.compile(r"(?<=\d)\s*(?:\^\s*)?\{?\s*(?:\\(?:text|mathrm|textrm)\s*\{\s*)?(?:st|nd|rd|th)\b\s*\}?\}?")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|\bdegrees?\b")
_PERCENT = re.compile(r"\\%|%|\bpercent(age)?\b|\bpct\b")
_UNITS = {"cm", "m", "km", "mm", "ft", "feet", "foot", "in", "inch", "inches", "yd", "yards", "mi", "miles",
          "mile", "kg", "g", "lb", "lbs", "pounds", "oz", "s", "sec", "seconds", "min", "minutes", "hr", "hrs",
          "hours", "days", "weeks", "years", "mph", "units", "sq", "square", "cubic", "meters", "cents",
          "dollars", "cups", "ml", "l", "liters", "gallons", "points", "ways", "people", "students", "apples"}
_GLUED_OR = re.compile(r"(?<=[)\]}\d])\s*\.?\s*or\s*(?=[(\[\\\d-]|[A-Z]|[a-z][(_=])")
_UNIT_IN_LIST = re.compile(r"(?<=[\d}])\s*\b(?:" + "|".join(sorted(_UNITS, key=len, reverse=True))
                           + r")(?![A-Za-z])(?:\s*\^\s*\{?[23]\}?)?(?=\s*(?:[,;)\]]| or | and |$))")
_WORD_TAIL = re.compile(r"(?:(?:\s*\b|(?<=\d))[a-zA-Z]{2,}\b\.?)+(?:\s*\^\s*\{?[23]\}?)?\s*$")  # `10 weeks`, `10weeks`
_ELLIPSIS = re.compile(r"(,\s*)(?:\.\.\.|\\[lc]?dots)\s*$")
_AND_LIST = re.compile(r"(?:(?<=[\d})\]])|(?<=\b[A-Za-z])|(?<=\d[A-Za-z]))\s*\.?,?\s*\band\b\s*"
                       r"(?=[-\d\\(]|[A-Za-z](?![A-Za-z])|[A-Za-z]{1,3}(?:_\{?\w+\}?)?\s*=)")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_SPACE_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?: \d{3})+(?:\.\d+)?")


# Before `\approx`, a value (a number, a fraction, a root, an equation) is the exact answer and what follows its
# rounding; a bare name before it (`x \approx 11`) names the value that follows.
_APPROX_AFTER_VALUE = re.compile(r"[=\d]|\\(?:frac|sqrt|pi)")
_EMPTY_SQRT = re.compile(r"\\sqrt\s*\{\s*\}")
# A sentence around a bare answer: "The final answer is", "Answer:", "所以答案是".
_ANSWER_PREFIX = re.compile(r"(?i)(?:(?:so|thus|therefore|hence),?\s+)?(?:the\s+)?(?:final\s+)?answer(?:\s+is)?"
                            r"(?:\s*[:：]\s*|\s+)"
                            r"|(?:所以|因此|故)?[，,]?(?:最终)?答案(?:是|为|為)?\s*[:：]?\s*")


def _strip_wrappers(s: str) -> str:
    """Remove `$..$`, `\\(..\\)`, `\\[..\\]`, a whole-answer `\\boxed{..}` and trailing punctuation."""
    for _ in range(10):
        s0 = s
        s = s.strip()
        while s[-1:] in (".", ",", ";") and not s.endswith("...") and s[-2:-1] != "\\":
            s = s[:-1].rstrip()
        if s.endswith("\\") and not s.endswith("\\\\"):  # a stray trailing backslash (`185\`) is no command
            s = s[:-1].rstrip()
        for open_, close in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if s.startswith(open_) and s.endswith(close) and len(s) >= len(open_) + len(close):
                s = s[len(open_) : len(s) - len(close)]
        if "\\boxed" in s or "\\fbox" in s:
            b = last_boxed(s)
            if b is not None:
                s = b
        if s == s0:
            break
    return s


def _replace_text_groups(s: str) -> str:
    """`\\text{..}` and friends: drop units after a value (`5\\text{ cm}^2`), keep the words of a prose answer."""
    pieces: list[tuple[int, int, str]] = []
    for cmd in _TEXT_CMDS:
        start = 0
        while (p := s.find(cmd + "{", start)) >= 0:
            k = match_brace(s, p + len(cmd))
            if k < 0:
                break
            pieces.append((p, k + 1, s[p + len(cmd) + 1 : k]))
            start = k + 1
    if not pieces:
        return s
    pieces.sort()
    outside = []
    last = 0
    for a, b, _ in pieces:
        outside.append(s[last:a])
        last = b
    outside.append(s[last:])
    has_value = bool(re.search(r"[0-9]|\\(frac|sqrt|pi)", "".join(outside)))
    out, last = [], 0
    for a, b, content in pieces:
        if a < last:
            continue
        out.append(s[last:a])
        c = content.strip()
        if c.lower() in ("and", ","):
            out.append(",")
        elif c.lower() == "or":
            out.append(" or ")
        elif has_value and re.fullmatch(r"[a-zA-Z .]*", c):
            # a unit: also drop the exponent of `\text{cm}^2`
            m = re.match(r"\s*\^\s*\{?[23]\}?", s[b:])
            if m:
                b += m.end()
        else:
            out.append(" " + content + " " if re.fullmatch(r"[a-zA-Z .]*", c) else content)
        last = b
    out.append(s[last:])
    return "".join(out)


def normalize(answer: str) -> str:
    """Canonical spelling of one answer: wrappers, spacing macros, units, degrees, `$` and `\\%` handled.

    A percentage keeps a single trailing `%` so the comparison can accept both 28 and 0.28 for 28%.
    """
    s = undouble_backslashes(answer[: MAX_ANSWER_CHARS * 2])
    if "\x00" in s:
        s = s.replace("\x00", "")
    for k, v in _UNICODE.items():
        if k in s:
            s = s.replace(k, v)
    # Matrix row separators `\\` must survive the removal of `\ ` (a spacing macro) below.
    s = s.replace("\n", " ").replace("\\\\", " \x01 ")
    s = _strip_wrappers(s)
    s = _ELLIPSIS.sub("\\1 \u2026", s)  # `1, 2, 3, ...` is not the finite list 1, 2, 3
    s = re.sub(r"(?<=\d)\s*(?:\{\s*,\s*\}|,\\!)\s*(?=\d{3}(?!\d))", "", s)  # 14{,}916, 11,\!111: one number
    s = re.sub(r"\s*\{\s*,\s*\}\s*", ",", s)  # 14{,}916 and 14 {, }916
    k = s.find("\\approx")
    if k > 0 and _APPROX_AFTER_VALUE.search(s[:k]):
        s = s[:k]  # `\frac{\sqrt3}{3} \approx 0.577`, `x = 1/3 \approx 0.33`: the exact value is the answer
    s = _EMPTY_SQRT.sub(r"\\sqrt", s)  # `\sqrt{}3`: the radicand is what follows
    s = re.sub(r",\\!\s*", ",", s)  # `11,\\! 111` is one number too
    for d in _GLUE:  # `10,\\!080` is one number
        s = s.replace(d, "")
    for d in _DROP:
        s = s.replace(d, " ")
    for a, b in _RENAME:
        s = s.replace(a, b)
    s = s.replace("\\{", " \\{ ").replace("\\}", " \\} ")
    s = s.replace("\x01", "\\\\")
    s = _DEGREES.sub(" ", s)
    s = _ORDINAL.sub("", s)  # 5^\mathrm{th}, 21st
    s = _replace_text_groups(s)
    pct = False
    if _PERCENT.search(s):
        pct = True
        s = _PERCENT.sub(" ", s)
    s = re.sub(r"\s+", " ", s).strip()
    s = _strip_wrappers(s)
    m = _ANSWER_PREFIX.match(s)
    if m and s[m.end() :].strip():  # "The answer is 0.25 + 3", "答案是 5": the answer after the phrase
        s = s[m.end() :].strip()
    s = _GLUED_OR.sub(" or ", s)  # `(11,7)or(7,11)`
    s = _AND_LIST.sub(", ", s)  # `19, 46, and 82`
    s = _UNIT_IN_LIST.sub("", s)  # `3 cm, 4 cm`
    if s.startswith("{") and s.endswith("}") and "," in s and match_brace(s, 0) == len(s) - 1:
        s = "\\{" + s[1:-1] + "\\}"  # `{-2021, 2021}`: a set written with bare braces
    # Leading prose such as "x \in", "k =" is left to the structure parser; trailing unit words go here.
    m = _WORD_TAIL.search(s)
    if m and m.start() > 0 and re.search(r"[0-9}]\s*$", s[: m.start()]):
        words = re.findall(r"[a-zA-Z]+", m.group(0))
        if all(w.lower() in _UNITS or (len(w) >= 4 and w.lower() not in FUNCTION_NAMES) for w in words):
            s = s[: m.start()].strip()
    if _THOUSANDS.fullmatch(s) or _SPACE_THOUSANDS.fullmatch(s):
        s = s.replace(",", "").replace(" ", "")
    if s.startswith("\\text{") and s.endswith("}") and match_brace(s, 5) == len(s) - 1:
        s = s[6:-1].strip()
    return s + "%" if pct and s else s
