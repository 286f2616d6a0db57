import pytest

from delrec_train.template import DEFAULT_TEMPLATE, PromptTokens, parse_template, soft_names, without_soft


class CharTok:
    """Stub tokenizer: one id per character (ord % 50 + 1)."""

    def __init__(self):
        self.calls = 0

    def encode_many(self, strings):
        self.calls += 1
        return [[ord(ch) % 50 + 1 for ch in s] for s in strings]


def test_parse_default_template():
    p = parse_template(DEFAULT_TEMPLATE)
    assert p == [("soft", "default"), ("text", "A user watched:"), ("history", ""),
                 ("text", ".\nThe user will next watch:"), ("candidate", ""), ("text", "\n")]
    assert soft_names(DEFAULT_TEMPLATE) == ["default"]
    assert without_soft(DEFAULT_TEMPLATE) == "A user watched:{history}.\nThe user will next watch:{candidate}\n"
    assert parse_template("{{x}}{history}{candidate}") == [("text", "{x}"), ("history", ""), ("candidate", "")]
    assert without_soft("{soft:a}{{{history}}}{candidate}") == "{{{history}}}{candidate}"


@pytest.mark.parametrize("bad", ["{candidate}{history}", "{history}", "{history}{candidate}{soft:x}",
                                 "{history}{candidate}{history}", "{foo}{history}{candidate}", "{history}{candidate}}",
                                 "{soft:bad name}{history}{candidate}"])
def test_bad_templates(bad):
    with pytest.raises(ValueError):
        parse_template(bad)


def test_prompt_tokens_rows():
    tok = CharTok()
    titles = {"1": "Ab", "2": "C"}
    pt = PromptTokens("{soft:s}U:{history}.N:{candidate}\n", titles, tok, item_prefix=" ", history_sep=",", bos=7)
    assert tok.calls == 1  # one call for everything
    e = lambda s: [ord(ch) % 50 + 1 for ch in s]  # noqa: E731
    segs = pt.prefix(["1", "2"])
    assert segs[0].kind == "tokens" and segs[0].tokens == [7]  # BOS before the soft prompt
    assert segs[1].kind == "soft" and segs[1].soft == "s"
    assert segs[2].tokens == e("U:") + e(" Ab") + e(",") + e(" C") + e(".N:")
    assert pt.continuation("2") == e(" C") + e("\n")
    assert pt.terminator == e("\n")
    pt2 = PromptTokens("{history}:{candidate}", titles, tok)
    assert pt2.terminator == [] and pt2.continuation("1") == e(" Ab")
    assert [s.kind for s in pt2.prefix([])] == ["tokens"]
