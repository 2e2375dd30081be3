"""Sentence parser: entities / relations / target from dependency trees of real VidSTG sentences.

No stanza model exists offline, so each sentence's tree is written here by hand, UD style (as stanza's
English models annotate), in a compact form `word lemma UPOS head deprel [feats]` turned into CoNLL-U
text and read with stanza's own CoNLL reader. Every sentence is checked to occur verbatim in
shared/data/vidstg/val_annotations.json (captions and questions).
"""

from __future__ import annotations

import json

import pytest
from stanza.utils.conll import CoNLL

from processing_stvg.parsing_stvg import (
    EmptySentenceError,
    NoNounPhraseError,
    ParsedSentence,
    SentenceParseError,
    StanzaModelsMissingError,
    StanzaSentenceParser,
    check_sentence_text,
    extract_parse,
)

CASES = [
    dict(
        text="the child in red clothes and black pants is watching the ball.",
        tree="""
        the the DET 2 det
        child child NOUN 10 nsubj
        in in ADP 5 case
        red red ADJ 5 amod
        clothes clothes NOUN 2 nmod
        and and CCONJ 8 cc
        black black ADJ 8 amod
        pants pants NOUN 5 conj
        is be AUX 10 aux
        watching watch VERB 0 root
        the the DET 12 det
        ball ball NOUN 10 obj
        . . PUNCT 10 punct
        """,
        entities=["the child in red clothes and black pants", "the ball"],
        relations={(0, "is watching", 1)},
        target=0,
    ),
    dict(
        text="who is watching the ball?",
        tree="""
        who who PRON 3 nsubj PronType=Int
        is be AUX 3 aux
        watching watch VERB 0 root
        the the DET 5 det
        ball ball NOUN 3 obj
        ? ? PUNCT 3 punct
        """,
        entities=["who", "the ball"],
        relations={(0, "is watching", 1)},
        target=0,
    ),
    dict(
        text="a child in red holds a yellow cup at home.",
        tree="""
        a a DET 2 det
        child child NOUN 5 nsubj
        in in ADP 4 case
        red red NOUN 2 nmod
        holds hold VERB 0 root
        a a DET 8 det
        yellow yellow ADJ 8 amod
        cup cup NOUN 5 obj
        at at ADP 10 case
        home home NOUN 5 obl
        . . PUNCT 5 punct
        """,
        entities=["a child in red", "a yellow cup", "home"],
        relations={(0, "holds", 1), (0, "holds at", 2)},
        target=0,
    ),
    dict(
        text="an adult in light blue clothes is above a sofa.",
        tree="""
        an a DET 2 det
        adult adult NOUN 10 nsubj
        in in ADP 6 case
        light light ADJ 5 amod
        blue blue ADJ 6 amod
        clothes clothes NOUN 2 nmod
        is be AUX 10 cop
        above above ADP 10 case
        a a DET 10 det
        sofa sofa NOUN 0 root
        . . PUNCT 10 punct
        """,
        entities=["an adult in light blue clothes", "a sofa"],
        relations={(0, "is above", 1)},
        target=0,
    ),
    dict(
        text="an adult wearing sunglasses is above a blue watercraft.",
        tree="""
        an a DET 2 det
        adult adult NOUN 9 nsubj
        wearing wear VERB 2 acl
        sunglasses sunglasses NOUN 3 obj
        is be AUX 9 cop
        above above ADP 9 case
        a a DET 9 det
        blue blue ADJ 9 amod
        watercraft watercraft NOUN 0 root
        . . PUNCT 9 punct
        """,
        entities=["an adult wearing sunglasses", "a blue watercraft"],
        relations={(0, "is above", 1)},
        target=0,
    ),
    dict(
        text="the child in red is leaning on the chair.",
        tree="""
        the the DET 2 det
        child child NOUN 6 nsubj
        in in ADP 4 case
        red red NOUN 2 nmod
        is be AUX 6 aux
        leaning lean VERB 0 root
        on on ADP 9 case
        the the DET 9 det
        chair chair NOUN 6 obl
        . . PUNCT 6 punct
        """,
        entities=["the child in red", "the chair"],
        relations={(0, "is leaning on", 1)},
        target=0,
    ),
    dict(
        text="an adult sitting on a bed watches an adult standing.",
        tree="""
        an a DET 2 det
        adult adult NOUN 7 nsubj
        sitting sit VERB 2 acl
        on on ADP 6 case
        a a DET 6 det
        bed bed NOUN 3 obl
        watches watch VERB 0 root
        an a DET 9 det
        adult adult NOUN 7 obj
        standing stand VERB 9 acl
        . . PUNCT 7 punct
        """,
        entities=["an adult", "a bed", "an adult standing"],
        relations={(0, "sitting on", 1), (0, "watches", 2)},
        target=0,
    ),
    dict(
        text="there is a table beneath a bottle at home.",
        tree="""
        there there PRON 2 expl
        is be VERB 0 root
        a a DET 4 det
        table table NOUN 2 nsubj
        beneath beneath ADP 7 case
        a a DET 7 det
        bottle bottle NOUN 2 obl
        at at ADP 9 case
        home home NOUN 2 obl
        . . PUNCT 2 punct
        """,
        entities=["a table", "a bottle", "home"],
        relations={(0, "is beneath", 1), (0, "is at", 2)},
        target=0,
    ),
    dict(
        text="there is a red chair behind a laptop in the room.",
        tree="""
        there there PRON 2 expl
        is be VERB 0 root
        a a DET 5 det
        red red ADJ 5 amod
        chair chair NOUN 2 nsubj
        behind behind ADP 8 case
        a a DET 8 det
        laptop laptop NOUN 5 nmod
        in in ADP 11 case
        the the DET 11 det
        room room NOUN 2 obl
        . . PUNCT 2 punct
        """,
        entities=["a red chair", "a laptop", "the room"],
        relations={(0, "behind", 1), (0, "is in", 2)},
        target=0,
    ),
    dict(
        text="there is a black dog chasing another dog in gray on the ground.",
        tree="""
        there there PRON 2 expl
        is be VERB 0 root
        a a DET 5 det
        black black ADJ 5 amod
        dog dog NOUN 2 nsubj
        chasing chase VERB 5 acl
        another another DET 8 det
        dog dog NOUN 6 obj
        in in ADP 10 case
        gray gray NOUN 8 nmod
        on on ADP 13 case
        the the DET 13 det
        ground ground NOUN 6 obl
        . . PUNCT 2 punct
        """,
        entities=["a black dog", "another dog in gray", "the ground"],
        relations={(0, "chasing", 1), (0, "chasing on", 2)},
        target=0,
    ),
    dict(
        text="a child is next to an another child.",
        tree="""
        a a DET 2 det
        child child NOUN 4 nsubj
        is be AUX 4 cop
        next next ADJ 0 root
        to to ADP 8 case
        an a DET 8 det
        another another DET 8 det
        child child NOUN 4 obl
        . . PUNCT 4 punct
        """,
        entities=["a child", "an another child"],
        relations={(0, "is next to", 1)},
        target=0,
    ),
    dict(
        text="an adult in green is in front of another adult in white in the room.",
        tree="""
        an a DET 2 det
        adult adult NOUN 7 nsubj
        in in ADP 4 case
        green green NOUN 2 nmod
        is be AUX 7 cop
        in in ADP 7 case
        front front NOUN 0 root
        of of ADP 10 case
        another another DET 10 det
        adult adult NOUN 7 nmod
        in in ADP 12 case
        white white NOUN 10 nmod
        in in ADP 15 case
        the the DET 15 det
        room room NOUN 7 obl
        . . PUNCT 7 punct
        """,
        entities=["an adult in green", "another adult in white", "the room"],
        relations={(0, "is in front of", 1), (0, "is in", 2)},
        target=0,
    ),
    dict(
        text="who is in front of the child in the room?",
        tree="""
        who who PRON 4 nsubj PronType=Int
        is be AUX 4 cop
        in in ADP 4 case
        front front NOUN 0 root
        of of ADP 7 case
        the the DET 7 det
        child child NOUN 4 nmod
        in in ADP 10 case
        the the DET 10 det
        room room NOUN 7 nmod
        ? ? PUNCT 4 punct
        """,
        entities=["who", "the child in the room"],
        relations={(0, "is in front of", 1)},
        target=0,
    ),
    dict(
        text="what does the adult in blue pat outdoors?",
        tree="""
        what what PRON 7 obj PronType=Int
        does do AUX 7 aux
        the the DET 4 det
        adult adult NOUN 7 nsubj
        in in ADP 6 case
        blue blue NOUN 4 nmod
        pat pat VERB 0 root
        outdoors outdoors ADV 7 advmod
        ? ? PUNCT 7 punct
        """,
        entities=["what", "the adult in blue"],
        relations={(1, "pat", 0)},
        target=0,
    ),
    dict(
        text="who is the adult in black clothes away from?",
        tree="""
        who who PRON 8 obl PronType=Int
        is be AUX 8 cop
        the the DET 4 det
        adult adult NOUN 8 nsubj
        in in ADP 7 case
        black black ADJ 7 amod
        clothes clothes NOUN 4 nmod
        away away ADV 0 root
        from from ADP 1 case
        ? ? PUNCT 8 punct
        """,
        entities=["who", "the adult in black clothes"],
        relations={(1, "is away from", 0)},
        target=0,
    ),
    dict(
        text="who leans on the baby seat in the room?",
        tree="""
        who who PRON 2 nsubj PronType=Int
        leans lean VERB 0 root
        on on ADP 6 case
        the the DET 6 det
        baby baby NOUN 6 compound
        seat seat NOUN 2 obl
        in in ADP 9 case
        the the DET 9 det
        room room NOUN 2 obl
        ? ? PUNCT 2 punct
        """,
        entities=["who", "the baby seat", "the room"],
        relations={(0, "leans on", 1), (0, "leans in", 2)},
        target=0,
    ),
    dict(
        text="who does the adult woman in black hug in the swimming pool?",
        tree="""
        who who PRON 8 obj PronType=Int
        does do AUX 8 aux
        the the DET 5 det
        adult adult NOUN 5 compound
        woman woman NOUN 8 nsubj
        in in ADP 7 case
        black black NOUN 5 nmod
        hug hug VERB 0 root
        in in ADP 12 case
        the the DET 12 det
        swimming swimming NOUN 12 compound
        pool pool NOUN 8 obl
        ? ? PUNCT 8 punct
        """,
        entities=["who", "the adult woman in black", "the swimming pool"],
        relations={(1, "hug", 0), (1, "hug in", 2)},
        target=0,
    ),
    dict(
        text="what is outside the adult man in black on the water?",
        tree="""
        what what PRON 6 nsubj PronType=Int
        is be AUX 6 cop
        outside outside ADP 6 case
        the the DET 6 det
        adult adult NOUN 6 compound
        man man NOUN 0 root
        in in ADP 8 case
        black black NOUN 6 nmod
        on on ADP 11 case
        the the DET 11 det
        water water NOUN 6 obl
        ? ? PUNCT 6 punct
        """,
        entities=["what", "the adult man in black", "the water"],
        relations={(0, "is outside", 1), (0, "is on", 2)},
        target=0,
    ),
    dict(
        text="who pushes the green watercraft by the sea?",
        tree="""
        who who PRON 2 nsubj PronType=Int
        pushes push VERB 0 root
        the the DET 5 det
        green green ADJ 5 amod
        watercraft watercraft NOUN 2 obj
        by by ADP 8 case
        the the DET 8 det
        sea sea NOUN 2 obl
        ? ? PUNCT 2 punct
        """,
        entities=["who", "the green watercraft", "the sea"],
        relations={(0, "pushes", 1), (0, "pushes by", 2)},
        target=0,
    ),
    dict(
        text="who is holding hands of the child?",
        tree="""
        who who PRON 3 nsubj PronType=Int
        is be AUX 3 aux
        holding hold VERB 0 root
        hands hand NOUN 3 obj
        of of ADP 7 case
        the the DET 7 det
        child child NOUN 4 nmod
        ? ? PUNCT 3 punct
        """,
        entities=["who", "hands of the child"],
        relations={(0, "is holding", 1)},
        target=0,
    ),
    dict(
        text="what does the adult sitting in the wheelchair use?",
        tree="""
        what what PRON 9 obj PronType=Int
        does do AUX 9 aux
        the the DET 4 det
        adult adult NOUN 9 nsubj
        sitting sit VERB 4 acl
        in in ADP 8 case
        the the DET 8 det
        wheelchair wheelchair NOUN 5 obl
        use use VERB 0 root
        ? ? PUNCT 9 punct
        """,
        entities=["what", "the adult", "the wheelchair"],
        relations={(1, "sitting in", 2), (1, "use", 0)},
        target=0,
    ),
    dict(
        text="who is the adult man in black next to?",
        tree="""
        who who PRON 8 obl PronType=Int
        is be AUX 8 cop
        the the DET 5 det
        adult adult NOUN 5 compound
        man man NOUN 8 nsubj
        in in ADP 7 case
        black black NOUN 5 nmod
        next next ADJ 0 root
        to to ADP 1 case
        ? ? PUNCT 8 punct
        """,
        entities=["who", "the adult man in black"],
        relations={(1, "is next to", 0)},
        target=0,
    ),
    dict(
        text="what chases the white sports ball on the ground?",
        tree="""
        what what PRON 2 nsubj PronType=Int
        chases chase VERB 0 root
        the the DET 6 det
        white white ADJ 6 amod
        sports sport NOUN 6 compound
        ball ball NOUN 2 obj
        on on ADP 9 case
        the the DET 9 det
        ground ground NOUN 2 obl
        ? ? PUNCT 2 punct
        """,
        entities=["what", "the white sports ball", "the ground"],
        relations={(0, "chases", 1), (0, "chases on", 2)},
        target=0,
    ),
    dict(
        text="what does the child with blond-hair hold?",
        tree="""
        what what PRON 7 obj PronType=Int
        does do AUX 7 aux
        the the DET 4 det
        child child NOUN 7 nsubj
        with with ADP 6 case
        blond-hair blond-hair NOUN 4 nmod
        hold hold VERB 0 root
        ? ? PUNCT 7 punct
        """,
        entities=["what", "the child with blond-hair"],
        relations={(1, "hold", 0)},
        target=0,
    ),
    dict(
        text="an adult woman in black hugs a child in purple outdoors.",
        tree="""
        an a DET 3 det
        adult adult ADJ 3 amod
        woman woman NOUN 6 nsubj
        in in ADP 5 case
        black black NOUN 3 nmod
        hugs hug VERB 0 root
        a a DET 8 det
        child child NOUN 6 obj
        in in ADP 10 case
        purple purple NOUN 8 nmod
        outdoors outdoors ADV 6 advmod
        . . PUNCT 6 punct
        """,
        entities=["an adult woman in black", "a child in purple"],
        relations={(0, "hugs", 1)},
        target=0,
    ),
    dict(
        text="an adult with yellow hat speaks to an another adult woman on the tree.",
        tree="""
        an a DET 2 det
        adult adult NOUN 6 nsubj
        with with ADP 5 case
        yellow yellow ADJ 5 amod
        hat hat NOUN 2 nmod
        speaks speak VERB 0 root
        to to ADP 11 case
        an a DET 11 det
        another another DET 11 det
        adult adult ADJ 11 amod
        woman woman NOUN 6 obl
        on on ADP 14 case
        the the DET 14 det
        tree tree NOUN 11 nmod
        . . PUNCT 6 punct
        """,
        entities=["an adult with yellow hat", "an another adult woman", "the tree"],
        relations={(0, "speaks to", 1), (1, "on", 2)},
        target=0,
    ),
    dict(
        text="a child in blue clothes holds hand of an adult.",
        tree="""
        a a DET 2 det
        child child NOUN 6 nsubj
        in in ADP 5 case
        blue blue ADJ 5 amod
        clothes clothes NOUN 2 nmod
        holds hold VERB 0 root
        hand hand NOUN 6 obj
        of of ADP 10 case
        an a DET 10 det
        adult adult NOUN 7 nmod
        . . PUNCT 6 punct
        """,
        entities=["a child in blue clothes", "hand of an adult"],
        relations={(0, "holds", 1)},
        target=0,
    ),
    dict(
        text="adult wearing a purple suit get off the bench.",
        tree="""
        adult adult NOUN 6 nsubj
        wearing wear VERB 1 acl
        a a DET 5 det
        purple purple ADJ 5 amod
        suit suit NOUN 2 obj
        get get VERB 0 root
        off off ADP 6 compound:prt
        the the DET 9 det
        bench bench NOUN 6 obj
        . . PUNCT 6 punct
        """,
        entities=["adult wearing a purple suit", "the bench"],
        relations={(0, "get off", 1)},
        target=0,
    ),
    dict(
        text="a child with blond-hair waves a red toy.",
        tree="""
        a a DET 2 det
        child child NOUN 5 nsubj
        with with ADP 4 case
        blond-hair blond-hair NOUN 2 nmod
        waves wave VERB 0 root
        a a DET 8 det
        red red ADJ 8 amod
        toy toy NOUN 5 obj
        . . PUNCT 5 punct
        """,
        entities=["a child with blond-hair", "a red toy"],
        relations={(0, "waves", 1)},
        target=0,
    ),
    dict(
        text="an adult is away from a cup in the room.",
        tree="""
        an a DET 2 det
        adult adult NOUN 4 nsubj
        is be AUX 4 cop
        away away ADV 0 root
        from from ADP 7 case
        a a DET 7 det
        cup cup NOUN 4 obl
        in in ADP 10 case
        the the DET 10 det
        room room NOUN 7 nmod
        . . PUNCT 4 punct
        """,
        entities=["an adult", "a cup in the room"],
        relations={(0, "is away from", 1)},
        target=0,
    ),
    dict(
        text="there is adult with red head band holding the hand of another adult.",
        tree="""
        there there PRON 2 expl
        is be VERB 0 root
        adult adult NOUN 2 nsubj
        with with ADP 7 case
        red red ADJ 7 amod
        head head NOUN 7 compound
        band band NOUN 3 nmod
        holding hold VERB 3 acl
        the the DET 10 det
        hand hand NOUN 8 obj
        of of ADP 13 case
        another another DET 13 det
        adult adult NOUN 10 nmod
        . . PUNCT 2 punct
        """,
        entities=["adult with red head band", "the hand of another adult"],
        relations={(0, "holding", 1)},
        target=0,
    ),
    dict(
        text="who walk towards the adult ?",
        tree="""
        who who PRON 2 nsubj PronType=Int
        walk walk VERB 0 root
        towards towards ADP 5 case
        the the DET 5 det
        adult adult NOUN 2 obl
        ? ? PUNCT 2 punct
        """,
        entities=["who", "the adult"],
        relations={(0, "walk towards", 1)},
        target=0,
    ),
    dict(
        text="who is pulling a toy car?",
        tree="""
        who who PRON 3 nsubj PronType=Int
        is be AUX 3 aux
        pulling pull VERB 0 root
        a a DET 6 det
        toy toy NOUN 6 compound
        car car NOUN 3 obj
        ? ? PUNCT 3 punct
        """,
        entities=["who", "a toy car"],
        relations={(0, "is pulling", 1)},
        target=0,
    ),
    dict(
        text="a child in white dress leans on a sofa in the living room.",
        tree="""
        a a DET 2 det
        child child NOUN 6 nsubj
        in in ADP 5 case
        white white ADJ 5 amod
        dress dress NOUN 2 nmod
        leans lean VERB 0 root
        on on ADP 9 case
        a a DET 9 det
        sofa sofa NOUN 6 obl
        in in ADP 13 case
        the the DET 13 det
        living living NOUN 13 compound
        room room NOUN 6 obl
        . . PUNCT 6 punct
        """,
        entities=["a child in white dress", "a sofa", "the living room"],
        relations={(0, "leans on", 1), (0, "leans in", 2)},
        target=0,
    ),
    dict(
        text="there is a white cat above another cat on the ground.",
        tree="""
        there there PRON 2 expl
        is be VERB 0 root
        a a DET 5 det
        white white ADJ 5 amod
        cat cat NOUN 2 nsubj
        above above ADP 8 case
        another another DET 8 det
        cat cat NOUN 5 nmod
        on on ADP 11 case
        the the DET 11 det
        ground ground NOUN 8 nmod
        . . PUNCT 2 punct
        """,
        entities=["a white cat", "another cat", "the ground"],
        relations={(0, "above", 1), (1, "on", 2)},
        target=0,
    ),
    dict(
        text="who is walking towards the adult woman?",
        tree="""
        who who PRON 3 nsubj PronType=Int
        is be AUX 3 aux
        walking walk VERB 0 root
        towards towards ADP 7 case
        the the DET 7 det
        adult adult ADJ 7 amod
        woman woman NOUN 3 obl
        ? ? PUNCT 3 punct
        """,
        entities=["who", "the adult woman"],
        relations={(0, "is walking towards", 1)},
        target=0,
    ),
    dict(
        text="an adult in white and black clothes is behind another adult in grey clothes.",
        tree="""
        an a DET 2 det
        adult adult NOUN 11 nsubj
        in in ADP 7 case
        white white ADJ 7 amod
        and and CCONJ 6 cc
        black black ADJ 4 conj
        clothes clothes NOUN 2 nmod
        is be AUX 11 cop
        behind behind ADP 11 case
        another another DET 11 det
        adult adult NOUN 0 root
        in in ADP 14 case
        grey grey ADJ 14 amod
        clothes clothes NOUN 11 nmod
        . . PUNCT 11 punct
        """,
        entities=["an adult in white and black clothes", "another adult in grey clothes"],
        relations={(0, "is behind", 1)},
        target=0,
    ),
    dict(
        text="who is beneath the child in the playground?",
        tree="""
        who who PRON 5 nsubj PronType=Int
        is be AUX 5 cop
        beneath beneath ADP 5 case
        the the DET 5 det
        child child NOUN 0 root
        in in ADP 8 case
        the the DET 8 det
        playground playground NOUN 5 nmod
        ? ? PUNCT 5 punct
        """,
        entities=["who", "the child in the playground"],
        relations={(0, "is beneath", 1)},
        target=0,
    ),
]


def to_conllu(text: str, tree: str) -> str:
    """Compact `word lemma UPOS head deprel [feats]` lines -> CoNLL-U text of one sentence."""
    lines = [f"# text = {text}"]
    rows = [line.split() for line in tree.strip().splitlines() if line.strip()]
    for index, row in enumerate(rows, start=1):
        word, lemma, upos, head, deprel = row[:5]
        feats = row[5] if len(row) > 5 else "_"
        lines.append("\t".join([str(index), word, lemma, upos, "_", feats, head, deprel, "_", "_"]))
    return "\n".join(lines) + "\n\n"


def document(text: str, tree: str):
    return CoNLL.conll2doc(input_str=to_conllu(text, tree))


# A typo in a hand-written tree would silently test a different sentence: check the table first.
@pytest.mark.parametrize("case", CASES, ids=[c["text"] for c in CASES])
def test_tree_matches_sentence(case):
    doc = document(case["text"], case["tree"])
    words = [w.text for w in doc.sentences[0].words]
    assert "".join(words) == case["text"].replace(" ", "")
    heads = [w.head for w in doc.sentences[0].words]
    assert sum(h == 0 for h in heads) == 1
    assert all(0 <= h <= len(words) for h in heads)


def test_sentences_are_real_vidstg_sentences(shared_dir):
    path = shared_dir / "data" / "vidstg" / "val_annotations.json"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    entries = json.loads(path.read_text())
    sentences = {c["description"] for e in entries for c in e["captions"] + e["questions"]}
    missing = [c["text"] for c in CASES if c["text"] not in sentences]
    assert not missing
    assert len(CASES) >= 30
    assert sum(c["text"].endswith("?") for c in CASES) >= 12  # questions and captions both covered


@pytest.mark.parametrize("case", CASES, ids=[c["text"] for c in CASES])
def test_extraction_matches_hand_annotation(case):
    parsed = extract_parse(document(case["text"], case["tree"]), text=case["text"])
    assert parsed.entities == case["entities"]
    assert set(parsed.relations) == case["relations"]
    assert len(parsed.relations) == len(case["relations"])
    assert parsed.target == case["target"]
    assert parsed.is_question == case["text"].endswith("?")


def test_constructed_coordination_and_relative_clause():
    # Not from VidSTG: coordination of subjects and verbs, a relative clause, negation.
    text = "a man and a child pick up the ball that the dog does not chase and throw it."
    tree = """
    a a DET 2 det
    man man NOUN 6 nsubj
    and and CCONJ 5 cc
    a a DET 5 det
    child child NOUN 2 conj
    pick pick VERB 0 root
    up up ADP 6 compound:prt
    the the DET 9 det
    ball ball NOUN 6 obj
    that that PRON 15 obj PronType=Rel
    the the DET 12 det
    dog dog NOUN 15 nsubj
    does do AUX 15 aux
    not not PART 15 advmod Polarity=Neg
    chase chase VERB 9 acl:relcl
    and and CCONJ 17 cc
    throw throw VERB 6 conj
    it it PRON 17 obj
    . . PUNCT 6 punct
    """
    parsed = extract_parse(document(text, tree), text=text)
    assert parsed.entities == ["a man", "a child", "the ball", "the dog", "it"]
    assert set(parsed.relations) == {
        (0, "pick up", 2),
        (1, "pick up", 2),
        (3, "not chase", 2),
        (0, "throw", 4),
    }
    assert parsed.target == 0


def test_row_round_trip():
    case = CASES[2]
    parsed = extract_parse(document(case["text"], case["tree"]), text=case["text"])
    row = parsed.to_row()
    assert row == {
        "entities": ["a child in red", "a yellow cup", "home"],
        "relations": [
            {"subject": 0, "predicate": "holds", "object": 1},
            {"subject": 0, "predicate": "holds at", "object": 2},
        ],
        "target": 0,
    }
    again = ParsedSentence.from_row({**row, "sentence": case["text"]})
    assert again.entities == parsed.entities
    assert again.relations == parsed.relations
    assert again.target == parsed.target


def test_sentence_without_noun_phrase_is_a_typed_error():
    text = "is running quickly."
    tree = """
    is be AUX 2 aux
    running run VERB 0 root
    quickly quickly ADV 2 advmod
    . . PUNCT 2 punct
    """
    with pytest.raises(NoNounPhraseError, match="is running quickly"):
        extract_parse(document(text, tree), text=text)


@pytest.mark.parametrize("text", ["", "   ", "?!"])
def test_empty_sentence_is_a_typed_error(text):
    with pytest.raises(EmptySentenceError):
        check_sentence_text(text)
    with pytest.raises(EmptySentenceError):
        StanzaSentenceParser(model_dir="/nonexistent").parse(text)


def test_parsed_sentence_validates_indices():
    with pytest.raises(NoNounPhraseError):
        ParsedSentence(entities=[], relations=[], target=0, sentence="x")
    with pytest.raises(SentenceParseError, match="target"):
        ParsedSentence(entities=["a dog"], relations=[], target=3, sentence="a dog")
    with pytest.raises(SentenceParseError, match="bad relation"):
        ParsedSentence(entities=["a dog"], relations=[(0, "chases", 5)], target=0, sentence="a dog")


def test_missing_stanza_models_error_names_the_download(tmp_path):
    parser = StanzaSentenceParser(language="en", model_dir=str(tmp_path / "stanza"))
    with pytest.raises(StanzaModelsMissingError) as info:
        parser.parse("a dog chases a ball.")
    message = str(info.value)
    assert "stanza.download('en'" in message and str(tmp_path / "stanza") in message
    assert "depparse" in message


def test_tokenize_only_models_are_reported_as_missing_depparse(tmp_path):
    # The situation of this machine: tokenize/mwt present, no pos/lemma/depparse.
    root = tmp_path / "stanza"
    (root / "en" / "tokenize").mkdir(parents=True)
    (root / "en" / "tokenize" / "combined.pt").write_bytes(b"x")
    (root / "en" / "mwt").mkdir()
    (root / "en" / "mwt" / "combined.pt").write_bytes(b"x")
    (root / "resources.json").write_text("{}")
    with pytest.raises(StanzaModelsMissingError, match="pos, lemma, depparse"):
        StanzaSentenceParser(model_dir=str(root)).parse("a dog chases a ball.")
