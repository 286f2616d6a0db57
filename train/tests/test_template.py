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


def test_mask_templates_parse_and_bad_ones_are_refused():
    from delrec_train.template import DEFAULT_MASK_TEMPLATE, is_mask_template

    assert is_mask_template(DEFAULT_MASK_TEMPLATE) and not is_mask_template(DEFAULT_TEMPLATE)
    p = parse_template("W:{history}{soft:a} C:{candidates}.{mask}")
    assert [k for k, _ in p] == ["text", "history", "soft", "text", "candidates", "text", "mask"]
    for bad in ["{history}{mask}.", "{history}{mask}{mask}", "{history}{candidate}{mask}",
                "{history}{candidates}{candidates}{mask}", "{history}{candidates}{candidate}", "{mask}"]:
        with pytest.raises(ValueError):
            parse_template(bad)


def test_mask_template_rows_candidates_and_label_words():
    from delrec_train.template import label_words_title_no_year, strip_year

    assert strip_year("Heat (1995)") == "Heat" and strip_year("Heat(1995)") == "Heat(1995)"
    assert strip_year("Heat (95)") == "Heat (95)" and strip_year(" (1995)") == "" and strip_year("X (199a)") == "X (199a)"
    assert label_words_title_no_year("Up") == ["Up", "Up"]  # both of DELRec's words, kept when equal
    tok = CharTok()
    titles = {"1": "Ab (1999)", "2": "C"}
    pt = PromptTokens("{soft:s}U:{history}.L:{candidates}{soft:t}!{mask}", titles, tok, item_prefix=" ",
                      history_sep=",", bos=None, candidates_sep="; ", label_words=label_words_title_no_year)
    assert tok.calls == 1
    e = lambda s: [ord(ch) % 50 + 1 for ch in s]  # noqa: E731
    segs = pt.prefix(["2"], ["1", "2"])
    assert [s.kind for s in segs] == ["soft", "tokens", "soft", "tokens"]
    assert segs[1].tokens == e("U:") + e(" C") + e(".L:") + e(" Ab (1999)") + e("; ") + e(" C")
    assert segs[3].tokens == e("!") and pt.terminator == [] and pt.lists_candidates()
    assert pt.label_tokens == {"1": [e(" Ab (1999)"), e(" Ab")], "2": [e(" C"), e(" C")]}
    with pytest.raises(ValueError, match="at least one"):
        pt.prefix(["2"], [])
