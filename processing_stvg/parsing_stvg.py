"""Sentence parser of stvg-vem: entity phrases, (subject, predicate, object) relations, target entity.

The paper's inputs per sentence (DESIGN section 4) are the entity phrases (noun phrases with their
modifiers: "the child in red clothes"), the relation phrases with their (subject, object) entity
indices ("is in front of", "walks towards", "is watching"), and the index of the queried entity: the
grammatical subject of a declarative sentence, the referent of the wh-word of a question.

The extraction is a pure function of a stanza dependency parse (:func:`extract_parse` over a
``stanza.Document``), so it is tested on CoNLL-U trees without any model. :class:`StanzaSentenceParser`
builds the stanza pipeline lazily from a local model folder (``download_method=None``: nothing is
downloaded at run time) and fails with :class:`StanzaModelsMissingError` naming what to download.

Rules (one function each):

- :func:`entity_phrase_words` -- which words make an entity phrase (head noun with determiners,
  adjectives, compounds, attribute PPs "in red", "with a hat", "of an adult", appearance clauses
  "wearing sunglasses", and clauses without nominal arguments "an adult standing").
- :func:`preposition_of` -- the (possibly multi-word) preposition introducing a nominal: "next to",
  "in front of", "on top of", "away from".
- :func:`predicate_words` -- the predicate of a relation: auxiliaries except do-support, copula,
  negation, the verb/adjective/adverb, particles, direction adverbs, then the preposition.
- :func:`find_target` -- the queried entity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WH_WORDS = frozenset({"who", "whom", "what", "which", "whose"})
RELATIVE_WORDS = frozenset({"who", "whom", "which", "that", "whose"})
NOMINAL_UPOS = frozenset({"NOUN", "PROPN", "PRON", "NUM"})
# Prepositions of an nmod that describe the entity itself (kept inside its phrase); any other
# preposition on an nmod makes a relation ("a table beneath a bottle").
ATTRIBUTE_PREPOSITIONS = frozenset({"in", "with", "of", "without", "'s"})
# Nouns that with "in/on/at ... of" form a spatial preposition: "in front of", "on top of".
RELATIONAL_NOUNS = frozenset(
    {"front", "top", "back", "side", "middle", "left", "right", "bottom", "edge", "center", "centre", "rear"}
)
# Verbs whose clause describes the entity's appearance: "an adult wearing sunglasses".
APPEARANCE_VERBS = frozenset({"wear", "dress"})
# Adverbs that belong to the predicate: "walks away from", "gets off", "moves close to".
DIRECTION_ADVERBS = frozenset(
    {"away", "back", "up", "down", "out", "off", "over", "around", "along", "together", "close", "closer",
     "forward", "apart", "toward", "towards", "near", "next", "behind", "inside", "outside", "ahead"}
)
ARGUMENT_RELATIONS = ("nsubj", "nsubj:pass", "obj", "iobj", "obl")
SUBJECT_RELATIONS = ("nsubj", "nsubj:pass")
OBJECT_RELATIONS = ("obj", "iobj")
CLAUSE_RELATIONS = ("conj", "xcomp", "advcl", "ccomp", "parataxis")
DEFAULT_PROCESSORS = "tokenize,mwt,pos,lemma,depparse"


class SentenceParseError(ValueError):
    """A sentence cannot be turned into entities / relations / target."""


class EmptySentenceError(SentenceParseError):
    """The sentence is empty or only whitespace/punctuation."""


class NoNounPhraseError(SentenceParseError):
    """The sentence has no noun phrase, so there is nothing to ground."""


class StanzaModelsMissingError(FileNotFoundError):
    """The stanza models needed for parsing are not in the given folder."""


@dataclass
class ParsedSentence:
    """Parse of one sentence: ``entities`` (phrases), ``relations`` ``(subject_index, predicate,
    object_index or -1)``, ``target`` (index into ``entities``)."""

    entities: list[str]
    relations: list[tuple[int, str, int]]
    target: int
    sentence: str = ""
    is_question: bool = False
    entity_heads: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.relations = [(int(s), str(p), int(o)) for s, p, o in self.relations]
        n = len(self.entities)
        if n == 0:
            raise NoNounPhraseError(f"sentence {self.sentence!r} has no noun phrase")
        if not 0 <= self.target < n:
            raise SentenceParseError(f"sentence {self.sentence!r}: target {self.target} is not an entity index (0..{n - 1})")
        for k, phrase in enumerate(self.entities):
            if not isinstance(phrase, str) or not any(ch.isalnum() for ch in phrase):
                raise SentenceParseError(f"sentence {self.sentence!r}: entity {k} ({phrase!r}) has no word")
        for s, p, o in self.relations:
            if not 0 <= s < n or not -1 <= o < n or not p.strip():
                raise SentenceParseError(f"sentence {self.sentence!r}: bad relation {(s, p, o)} for {n} entities")

    def to_row(self) -> dict[str, Any]:
        """The ``entities`` / ``relations`` / ``target`` columns of a ``queries`` row (DESIGN sec. 5)."""
        return {
            "entities": list(self.entities),
            "relations": [{"subject": s, "predicate": p, "object": o} for s, p, o in self.relations],
            "target": self.target,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ParsedSentence:
        """Rebuild from a ``queries`` row (or any mapping with entities / relations / target)."""
        relations = []
        for rel in row.get("relations") or []:
            if isinstance(rel, dict):
                relations.append((rel["subject"], rel["predicate"], rel["object"]))
            else:
                relations.append(tuple(rel))
        return cls(
            entities=list(row["entities"]),
            relations=relations,
            target=int(row["target"]),
            sentence=str(row.get("sentence", "")),
            is_question=row.get("qtype") == "interrogative",
        )


# ---------------------------------------------------------------------------------------------------
# Tree helpers over a stanza Sentence (words with .id, .text, .lemma, .upos, .feats, .head, .deprel)


class _Tree:
    def __init__(self, words: list[Any]):
        self.words = {int(w.id): w for w in words}
        self.children: dict[int, list[int]] = {i: [] for i in self.words}
        self.children[0] = []
        for w in words:
            self.children[int(w.head)].append(int(w.id))

    def word(self, i: int) -> Any:
        return self.words[i]

    def kids(self, i: int, *relations: str) -> list[int]:
        out = self.children.get(i, [])
        if not relations:
            return list(out)
        return [c for c in out if self.rel(c) in relations]

    def rel(self, i: int) -> str:
        return (self.words[i].deprel or "").lower()

    def base_rel(self, i: int) -> str:
        return self.rel(i).split(":")[0]

    def lemma(self, i: int) -> str:
        w = self.words[i]
        return (w.lemma or w.text or "").lower()

    def text(self, i: int) -> str:
        return self.words[i].text

    def upos(self, i: int) -> str:
        return self.words[i].upos or ""

    def feats(self, i: int) -> str:
        return self.words[i].feats or ""

    def subtree(self, i: int, skip: set[int] | None = None) -> list[int]:
        skip = skip or set()
        out, stack = [], [i]
        while stack:
            j = stack.pop()
            if j in skip:
                continue
            out.append(j)
            stack.extend(self.children.get(j, []))
        return sorted(out)


def _is_nominal(tree: _Tree, i: int) -> bool:
    return tree.upos(i) in NOMINAL_UPOS or tree.lemma(i) in WH_WORDS and tree.upos(i) in ("DET", "PRON")


def _is_wh(tree: _Tree, i: int) -> bool:
    return tree.lemma(i) in WH_WORDS and ("PronType=Int" in tree.feats(i) or "PronType=Rel" not in tree.feats(i))


def _is_relative(tree: _Tree, i: int, clause_head: int) -> bool:
    """A relative pronoun of the relative clause headed by ``clause_head``."""
    return tree.lemma(i) in RELATIVE_WORDS and (
        "PronType=Rel" in tree.feats(i) or tree.rel(clause_head) == "acl:relcl"
    )


def preposition_of(tree: _Tree, nominal: int) -> tuple[list[int], int]:
    """The preposition words introducing ``nominal`` and the entity it really names.

    ``case`` children with their ``fixed`` words give "next to", "because of"; a relational noun with
    an ``of``-nmod ("in front of the dog", "on top of the car") gives the preposition "in front of"
    and the entity "the dog".
    """
    words: list[int] = []
    for c in tree.kids(nominal, "case"):
        words.append(c)
        words.extend(tree.kids(c, "fixed"))
    if tree.lemma(nominal) in RELATIONAL_NOUNS and words:
        for m in tree.kids(nominal, "nmod"):
            inner = [c for c in tree.kids(m, "case")]
            if any(tree.lemma(c) == "of" for c in inner):
                words = words + [d for d in tree.kids(nominal, "det")] + [nominal]
                for c in inner:
                    words.append(c)
                    words.extend(tree.kids(c, "fixed"))
                return sorted(words), m
    return sorted(words), nominal


def _relation_nmods(tree: _Tree, head: int) -> list[int]:
    """nmod children of an entity head that express a relation rather than an attribute."""
    out = []
    for m in tree.kids(head, "nmod"):
        prep, _ = preposition_of(tree, m)
        prep_text = " ".join(tree.lemma(p) for p in prep)
        if prep and prep_text not in ATTRIBUTE_PREPOSITIONS:
            out.append(m)
        elif tree.lemma(m) in RELATIONAL_NOUNS and prep:
            out.append(m)  # "in front of" starts with the attribute preposition "in"
    return out


def _clause_has_nominal_argument(tree: _Tree, clause: int) -> bool:
    return any(
        _is_nominal(tree, c) for c in tree.kids(clause) if tree.base_rel(c) in ("obj", "iobj", "obl", "nsubj")
    )


def _relation_clauses(tree: _Tree, head: int) -> list[int]:
    """acl / acl:relcl children of an entity head that make relations (not appearance clauses)."""
    out = []
    for c in tree.kids(head):
        if tree.base_rel(c) != "acl":
            continue
        if tree.rel(c) == "acl" and tree.lemma(c) in APPEARANCE_VERBS:
            continue
        if tree.rel(c) == "acl" and not _clause_has_nominal_argument(tree, c):
            continue
        out.append(c)
    return out


def entity_phrase_words(tree: _Tree, head: int) -> list[int]:
    """Words of the entity phrase headed by ``head``: its subtree without its own preposition,
    coordinated entities, relation-making nmods and clauses, copula, appositions and punctuation."""
    skip = set()
    for c in tree.kids(head):
        rel = tree.base_rel(c)
        if rel in ("case", "cc", "conj", "punct", "cop", "appos", "parataxis", "nsubj", "aux", "expl",
                   "advcl", "obl", "advmod", "mark", "discourse", "vocative", "orphan", "dep", "csubj"):
            skip.add(c)
    skip.update(_relation_nmods(tree, head))
    skip.update(_relation_clauses(tree, head))
    words = tree.subtree(head, skip)
    # trailing / leading punctuation inside kept modifiers
    while words and tree.upos(words[-1]) == "PUNCT":
        words.pop()
    while words and tree.upos(words[0]) == "PUNCT":
        words.pop(0)
    return words


def predicate_words(tree: _Tree, predicate: int, preposition: list[int], include_head: bool = True) -> list[int]:
    """Words of a relation's predicate: auxiliaries (not do-support), copula, negation, the predicate
    word itself, particles and direction adverbs, then the preposition of the object."""
    words = []
    head_lemma = tree.lemma(predicate)
    for c in tree.kids(predicate):
        rel = tree.rel(c)
        if rel in ("aux", "aux:pass"):
            if tree.lemma(c) == "do" and head_lemma != "do":
                continue
            words.append(c)
        elif rel == "cop":
            words.append(c)
        elif rel == "compound:prt":
            words.append(c)
        elif rel == "advmod" and ("Polarity=Neg" in tree.feats(c) or tree.lemma(c) in ("not", "n't", "never")):
            words.append(c)
        elif rel == "advmod" and tree.lemma(c) in DIRECTION_ADVERBS and not tree.kids(c, "obl"):
            words.append(c)
    if include_head:
        words.append(predicate)
    ordered = sorted(set(words))
    return ordered + [p for p in preposition if p not in ordered]


@dataclass
class _Extraction:
    tree: _Tree
    heads: list[int] = field(default_factory=list)  # entity head word ids, in discovery order
    relations: list[tuple[int, list[int], int]] = field(default_factory=list)  # (subj head, pred words, obj head)
    subjects_of_root: list[int] = field(default_factory=list)

    def add_entity(self, head: int) -> int:
        if head not in self.heads:
            self.heads.append(head)
            # coordinated entities ("a child and an adult") are entities of their own
            for c in self.tree.kids(head, "conj"):
                if _is_nominal(self.tree, c):
                    self.add_entity(c)
            self._expand(head)
        return head

    def group(self, head: int) -> list[int]:
        """``head`` and the nominals coordinated with it."""
        return [head] + [c for c in self.tree.kids(head, "conj") if _is_nominal(self.tree, c)]

    def _expand(self, head: int) -> None:
        """Relations carried by an entity: relation nmods and relation clauses."""
        tree = self.tree
        for m in _relation_nmods(tree, head):
            prep, obj = preposition_of(tree, m)
            self.add_entity(obj)
            self.relations.append((head, prep, obj))
        for clause in _relation_clauses(tree, head):
            self.predicate(clause, inherited_subject=head)

    def predicate(self, p: int, inherited_subject: int | None = None) -> None:
        """Relations of the clause headed by ``p`` (a verb, or a copular adjective/adverb/noun)."""
        tree = self.tree
        subjects = [c for c in tree.kids(p) if tree.rel(c) in SUBJECT_RELATIONS]
        for s in list(subjects):
            if inherited_subject is not None and _is_relative(tree, s, p):
                subjects.remove(s)
        if not subjects and inherited_subject is not None:
            subjects = [inherited_subject]
        objects: list[tuple[list[int], int]] = []
        for c in tree.kids(p):
            rel = tree.rel(c)
            if rel in OBJECT_RELATIONS or rel == "obl":
                if not _is_nominal(tree, c):
                    continue
                if inherited_subject is not None and _is_relative(tree, c, p):
                    c_obj = inherited_subject  # "the ball that the child holds"
                    prep: list[int] = []
                else:
                    prep, c_obj = preposition_of(tree, c) if rel == "obl" else ([], c)
                objects.append((prep, c_obj))
            elif rel == "advmod" and tree.lemma(c) in DIRECTION_ADVERBS:
                # "is away from the bird": the adverb's own obl
                for o in tree.kids(c, "obl"):
                    if _is_nominal(tree, o):
                        prep, o_obj = preposition_of(tree, o)
                        objects.append(([c] + prep, o_obj))
        copular_nominal = bool(tree.kids(p, "cop")) and _is_nominal(tree, p)
        existential = bool(tree.kids(p, "expl"))
        # a copular noun names the object, it is not part of the predicate ("is in front of")
        include_head = not copular_nominal
        subject_heads: list[int] = []
        for s in subjects:
            if _is_nominal(tree, s) and tree.rel(s) != "expl":
                subject_heads.extend(self.group(self.add_entity(s)) if s != inherited_subject else [s])
        if copular_nominal:
            prep, obj = preposition_of(tree, p)
            self.add_entity(obj)
            for s in subject_heads:
                for o in self.group(obj):
                    self.relations.append((s, predicate_words(tree, p, prep, include_head=False), o))
        for prep, obj in objects:
            if obj != inherited_subject:
                self.add_entity(obj)
            for s in subject_heads:
                for o in self.group(obj) if obj != inherited_subject else [obj]:
                    self.relations.append((s, predicate_words(tree, p, prep, include_head=include_head), o))
        if not objects and not copular_nominal and not existential:
            for s in subject_heads:
                self.relations.append((s, predicate_words(tree, p, []), -1))
        if inherited_subject is None and tree.rel(p) == "root":
            self.subjects_of_root = list(subject_heads) or ([p] if copular_nominal else [])
        # clauses hanging off the predicate share its subject when they have none
        for c in tree.kids(p):
            if tree.base_rel(c) in ("conj", "xcomp", "advcl") and not _is_nominal(tree, c):
                has_subject = any(tree.rel(k) in SUBJECT_RELATIONS for k in tree.kids(c))
                first_subject = subject_heads[0] if subject_heads else None
                self.predicate(c, inherited_subject=None if has_subject else first_subject)
            elif tree.base_rel(c) == "conj" and _is_nominal(tree, c) and tree.kids(c, "cop"):
                self.predicate(c, inherited_subject=subject_heads[0] if subject_heads else None)


def _root(tree: _Tree) -> int | None:
    roots = tree.kids(0)
    return roots[0] if roots else None


def find_target(tree: _Tree, heads: list[int], root_subjects: list[int], is_question: bool) -> int:
    """Index (into ``heads``) of the queried entity.

    Question: the entity whose head is the wh-word ("who is watching the ball?" -> "who"), or whose
    determiner is ("which dog ..."). Declarative (or a question without a wh-entity): the grammatical
    subject of the main clause (the noun after "there is" in an existential), else the root noun of a
    verbless phrase, else the first entity.
    """
    if is_question:
        for k, h in enumerate(heads):
            if _is_wh(tree, h) or any(_is_wh(tree, d) for d in tree.kids(h, "det")):
                return k
    for s in root_subjects:
        if s in heads:
            return heads.index(s)
    root = _root(tree)
    if root is not None and root in heads:
        return heads.index(root)
    return 0


def _sentence_text(sentence: Any) -> str:
    text = getattr(sentence, "text", None)
    if text:
        return text
    return " ".join(w.text for w in sentence.words)


def _is_question(tree: _Tree, text: str) -> bool:
    if text.strip().endswith("?"):
        return True
    return any("PronType=Int" in tree.feats(i) for i in tree.words)


def extract_sentence(sentence: Any, text: str | None = None) -> ParsedSentence:
    """Entities, relations and target from one parsed stanza ``Sentence`` (pure function)."""
    text = text if text is not None else _sentence_text(sentence)
    tree = _Tree(list(sentence.words))
    root = _root(tree)
    if root is None:
        raise EmptySentenceError(f"sentence {text!r} is empty")
    ex = _Extraction(tree)
    is_question = _is_question(tree, text)
    if _is_nominal(tree, root) and not tree.kids(root, "cop"):
        # a verbless phrase: "a child in red holding a cup"
        ex.add_entity(root)
        ex.subjects_of_root = [root]
        for c in tree.kids(root):
            if tree.base_rel(c) in ("conj", "parataxis") and not _is_nominal(tree, c):
                ex.predicate(c, inherited_subject=root)
    else:
        ex.predicate(root)
    # nominals the clause walk did not reach (e.g. under dep/parataxis) still are noun phrases
    if not ex.heads:
        for i in sorted(tree.words):
            if tree.upos(i) in ("NOUN", "PROPN") and tree.base_rel(i) not in ("compound", "flat"):
                ex.add_entity(i)
                break
    if not ex.heads:
        raise NoNounPhraseError(f"sentence {text!r} has no noun phrase to ground; describe an object in it")
    order = sorted(ex.heads)
    index = {h: k for k, h in enumerate(order)}
    entities = [" ".join(tree.text(i) for i in entity_phrase_words(tree, h)) for h in order]
    relations: list[tuple[int, str, int]] = []
    for s, pred, o in ex.relations:
        pred_text = " ".join(tree.text(i) for i in pred).strip()
        if not pred_text or s not in index:
            continue
        rel = (index[s], pred_text, index[o] if o in index else -1)
        if rel not in relations and rel[0] != rel[2]:
            relations.append(rel)
    target = find_target(tree, order, ex.subjects_of_root, is_question)
    return ParsedSentence(
        entities=entities,
        relations=relations,
        target=target,
        sentence=text,
        is_question=is_question,
        entity_heads=order,
    )


def extract_parse(document: Any, text: str | None = None) -> ParsedSentence:
    """Entities, relations and target from a parsed ``stanza.Document`` (pure function).

    A document split into several sentences is merged: entities are concatenated (indices shifted)
    and the target comes from the first sentence.
    """
    text = text if text is not None else (getattr(document, "text", None) or "")
    sentences = list(getattr(document, "sentences", []) or [])
    if not sentences or not any(s.words for s in sentences):
        raise EmptySentenceError(f"sentence {text!r} is empty; give a non-empty description")
    parts: list[ParsedSentence] = []
    errors: list[SentenceParseError] = []
    for s in sentences:
        try:
            parts.append(extract_sentence(s))
        except SentenceParseError as err:
            errors.append(err)
    if not parts:
        if text.strip():
            raise NoNounPhraseError(f"sentence {text!r} has no noun phrase to ground; describe an object in it")
        raise errors[0]
    entities, relations, heads = [], [], []
    for part in parts:
        offset = len(entities)
        entities.extend(part.entities)
        heads.extend(part.entity_heads)
        relations.extend((s + offset, p, o + offset if o >= 0 else -1) for s, p, o in part.relations)
    first = parts[0]
    return ParsedSentence(
        entities=entities,
        relations=relations,
        target=first.target,
        sentence=text or first.sentence,
        is_question=any(p.is_question for p in parts),
        entity_heads=heads,
    )


# ---------------------------------------------------------------------------------------------------
# Stanza pipeline (lazy, local models only)


def default_stanza_dir() -> str:
    """Stanza's own default model folder (``$STANZA_RESOURCES_DIR`` or ``~/stanza_resources``)."""
    return os.environ.get("STANZA_RESOURCES_DIR", os.path.join(os.path.expanduser("~"), "stanza_resources"))


def _download_hint(language: str, model_dir: str, processors: str) -> str:
    return (
        f"python -c \"import stanza; stanza.download('{language}', model_dir='{model_dir}', "
        f"processors='{processors}')\""
    )


class StanzaSentenceParser:
    """Parse sentences with a local stanza pipeline (built on first use, never downloads).

    ``language`` and ``model_dir`` are plain settings (JSON-serialisable) so a processor can save them.
    """

    def __init__(self, language: str = "en", model_dir: str | None = None, processors: str = DEFAULT_PROCESSORS):
        self.language = language
        self.model_dir = model_dir
        self.processors = processors
        self._pipeline = None

    @property
    def resolved_dir(self) -> str:
        return str(self.model_dir) if self.model_dir else default_stanza_dir()

    def _missing(self, detail: str) -> StanzaModelsMissingError:
        return StanzaModelsMissingError(
            f"stanza models for language {self.language!r} (processors {self.processors}) are not available "
            f"in {self.resolved_dir!r}: {detail}. Download them once with:\n  "
            f"{_download_hint(self.language, self.resolved_dir, self.processors)}\n"
            f"or pass the folder that holds them (processor `parser_dir=`), or give already-parsed "
            f"sentences (ParsedSentence) instead of text."
        )

    @property
    def pipeline(self) -> Any:
        if self._pipeline is None:
            import stanza

            model_dir = Path(self.resolved_dir)
            if not (model_dir / "resources.json").is_file():
                raise self._missing("no resources.json")
            lang_dir = model_dir / self.language
            needed = [p for p in self.processors.split(",") if p not in ("tokenize", "mwt")]
            absent = [p for p in needed if not (lang_dir / p).is_dir() or not any((lang_dir / p).iterdir())]
            if absent:
                raise self._missing(f"no model for {', '.join(absent)}")
            try:
                self._pipeline = stanza.Pipeline(
                    lang=self.language,
                    dir=str(model_dir),
                    processors=self.processors,
                    download_method=None,
                    logging_level="WARN",
                )
            except (FileNotFoundError, ValueError, KeyError) as err:
                raise self._missing(str(err)) from err
        return self._pipeline

    def parse(self, sentence: str) -> ParsedSentence:
        """Parse one sentence into a :class:`ParsedSentence`."""
        check_sentence_text(sentence)
        return extract_parse(self.pipeline(sentence), text=sentence)


def check_sentence_text(sentence: Any) -> str:
    """A sentence must be a non-empty string with at least one letter."""
    if not isinstance(sentence, str):
        raise SentenceParseError(f"sentence must be a string, got {type(sentence).__name__}: {sentence!r}")
    if not any(ch.isalpha() for ch in sentence):
        raise EmptySentenceError(f"sentence {sentence!r} is empty; give a non-empty description")
    return sentence
