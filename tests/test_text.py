"The shared text layer: fortunes and WordNet readers on hand-made fixtures and on the installed Debian packages."
import os
from pathlib import Path
import pytest
from dl2021 import text
from dl2021.data import DataMissingError
from dl2021.text import (LANGUAGES, Fortune, WordNet, available_languages, clean_fortune, fortune_table, fortunes,
                         parse_data_line, parse_gloss, read_fortune_file, split_of, wu_palmer)

HAVE_FORTUNES = Path(text.FORTUNES_DIR).is_dir()
HAVE_WORDNET = (Path(text.WORDNET_DIR) / 'data.noun').is_file()


@pytest.fixture
def fortune_dir(tmp_path):
    "Debian's layout in miniature: top-level English, sub-folders, legacy encodings, an empty .u8, a link, ASCII art."
    (tmp_path / 'de').mkdir(); (tmp_path / 'pl').mkdir(); (tmp_path / 'it').mkdir(); (tmp_path / 'ru').mkdir()
    (tmp_path / 'wisdom').write_bytes('Know thyself.\n\t\t-- Socrates\n%\nCafé society.\n%  \nKnow thyself.\n\t\t-- Socrates\n%\n'
                                      .encode('latin-1'))                         # ISO-8859-1, no .u8, a duplicate
    (tmp_path / 'wisdom.dat').write_bytes(b'\x00\x00\x00\x02garbage')              # strfile index: never read
    (tmp_path / 'ascii-art').write_text(' /\\_/\\\n( o.o )\n%\n')
    (tmp_path / 'de' / 'zitate').write_bytes('Übung macht den Meister.\n%\n'.encode('latin-1'))
    (tmp_path / 'de' / 'zitate.u8').write_text('Übung macht den Meister.\n%\nÄrger über Öl.\n%\n')
    (tmp_path / 'pl' / 'zen').write_bytes('Zażółć gęślą jaźń.\n%\nCisza.\n'.encode('iso-8859-2'))
    (tmp_path / 'pl' / 'zen.u8').write_bytes(b'')                                 # empty, as in fortunes-pl
    (tmp_path / 'ru' / 'work').write_bytes('Труд облагораживает.\n%\n'.encode('koi8-r'))
    (tmp_path / 'it' / 'detti').write_text('Chi va piano va sano.\n')
    (tmp_path / 'detti').symlink_to(tmp_path / 'it' / 'detti')                     # fortunes-it's links at the top
    (tmp_path / 'brasil').write_text('Devagar se vai ao longe.\n%\n')
    return tmp_path


def test_fortunes_fixture(fortune_dir):
    fs = fortunes(root=fortune_dir)
    got = sorted((f.lang, f.collection, f.text) for f in fs)
    assert got == [('de', 'zitate', 'Ärger über Öl.'), ('de', 'zitate', 'Übung macht den Meister.'),
                   ('en', 'wisdom', 'Café society.'), ('en', 'wisdom', 'Know thyself.\n\t\t-- Socrates'),
                   ('it', 'detti', 'Chi va piano va sano.'),
                   ('pl', 'zen', 'Cisza.'), ('pl', 'zen', 'Zażółć gęślą jaźń.'),
                   ('pt', 'brasil', 'Devagar se vai ao longe.'), ('ru', 'work', 'Труд облагораживает.')]
    assert available_languages(fortune_dir) == ['en', 'de', 'it', 'pt', 'pl', 'ru']
    art = fortunes('en', root=fortune_dir, art=True)
    assert any(f.collection == 'ascii-art' for f in art)
    assert all(isinstance(f, Fortune) and f.split in ('train', 'valid', 'test') for f in fs)


def test_read_fortune_file_separators_and_cleaning(tmp_path):
    p = tmp_path / 'f'
    p.write_bytes(b'one\r\n%\r\n\x1b[33mtwo\x1b[m  \n%\n\n%\nthree *__\x08\x08UN*\n')
    assert read_fortune_file(p) == ['one', 'two', 'three *UN*']
    assert clean_fortune('a\x07b\tc  \n\n') == 'ab\tc'


def test_missing_language_names_the_package(fortune_dir, tmp_path, monkeypatch):
    with pytest.raises(DataMissingError, match='fortunes-zh'): fortunes('zh', root=fortune_dir)
    with pytest.raises(DataMissingError, match="Debian's `fortunes`"): fortunes(root=tmp_path / 'nothing')
    with pytest.raises(ValueError, match='unknown language'): fortunes('xx', root=fortune_dir)
    with pytest.raises(ValueError, match='split'): fortunes('en', 'dev', root=fortune_dir)
    monkeypatch.setenv('DL2021_FORTUNES', str(fortune_dir))                        # the override
    assert [f.text for f in fortunes('pt')] == ['Devagar se vai ao longe.']
    monkeypatch.setenv('DL2021_FORTUNES', str(tmp_path / 'nothing'))
    with pytest.raises(DataMissingError, match='fortunes-bg'): fortunes('bg')


def test_split_is_deterministic_disjoint_and_proportional():
    texts = [f'fortune number {i}' for i in range(20000)]
    a = [split_of(t) for t in texts]
    assert a == [split_of(t) for t in texts]                                       # same answer every time
    assert [split_of(t) for t in reversed(texts)] == a[::-1]                       # order does not matter
    n = {s: a.count(s) / len(a) for s in ('train', 'valid', 'test')}
    assert abs(n['train'] - .8) < .02 and abs(n['valid'] - .1) < .01 and abs(n['test'] - .1) < .01
    b = [split_of(t, seed=1) for t in texts]
    assert a != b and abs(b.count('test') / len(b) - .1) < .01                     # the seed reshuffles
    c = [split_of(t, valid=0., test=.5) for t in texts]
    assert 'valid' not in c and abs(c.count('test') / len(c) - .5) < .02
    with pytest.raises(ValueError): split_of('x', valid=.6, test=.5)


def test_fortune_table_bytes_per_char(fortune_dir):
    rows = {r['lang']: r for r in fortune_table(fortunes(root=fortune_dir))}
    assert rows['ru']['bytes'] == 2 * rows['ru']['chars'] - 2                      # Cyrillic 2 bytes; space, dot 1
    assert rows['pt']['bytes_per_char'] == 1.0
    assert rows['de']['fortunes'] == 2 and rows['de']['collections'] == 1
    assert sum(rows['de'][s] for s in ('train', 'valid', 'test')) == 2


@pytest.mark.skipif(not HAVE_FORTUNES, reason="Debian's fortunes are not installed (make test installs them)")
def test_installed_fortunes():
    langs = available_languages()
    assert {'en', 'de', 'ru', 'zh'} <= set(langs), langs
    fs = fortunes()
    rows = {r['lang']: r for r in fortune_table(fs)}
    for l in langs: assert rows[l]['fortunes'] > 300, l
    assert rows['en']['bytes_per_char'] < 1.01 and 1.6 < rows['ru']['bytes_per_char'] < 2 and rows['zh']['bytes_per_char'] > 1.8
    assert not any('\x1b' in f.text or '\b' in f.text for f in fs)                # escapes and overstrikes removed
    assert sum('\ufffd' in f.text for f in fs) < 10                                # everything decoded
    assert all(rows[l]['collections'] >= 1 for l in langs)
    # splits: disjoint, complete, identical whichever languages are read together
    by = {s: {(f.lang, f.text) for f in fortunes(split=s)} for s in ('train', 'valid', 'test')}
    assert not (by['train'] & by['valid'] or by['train'] & by['test'] or by['valid'] & by['test'])
    assert sum(map(len, by.values())) == len(fs)
    assert {f.text for f in fortunes('de', 'test')} == {t for l, t in by['test'] if l == 'de'}
    assert not any(f.lang == 'en' and f.collection in ('adams', 'zuse', 'chinese') for f in fs)   # no Italian links


# ---------------------------------------------------------------------------------------------------------- WordNet
NOUNS = [  # a tiny data.noun in WordNet's own format: entity > {animal > {dog > puppy, cat}, artifact > car}
    '00001740 03 n 01 entity 0 002 ~ 00002000 n 0000 ~ 00003000 n 0000 | that which is perceived to exist  ',
    '00002000 05 n 02 animal 0 beast 0 003 @ 00001740 n 0000 ~ 00004000 n 0000 ~ 00005000 n 0000 | a living organism; '
    '"animals move"  ',
    '00003000 06 n 01 artifact 0 002 @ 00001740 n 0000 ~ 00006000 n 0000 | a man-made object  ',
    '00004000 05 n 02 dog 0 domestic_dog 0 004 @ 00002000 n 0000 ~ 00007000 n 0000 ~i 00008000 n 0000 '
    '%p 00005000 n 0000 | a canine; '
    '"the dog barked all night"; "a dog\'s life"  ',
    '00005000 05 n 01 cat 0 001 @ 00002000 n 0000 | a feline; "the cat purred"  ',
    '00006000 06 n 01 car 0 001 @ 00003000 n 0000 | a motor vehicle  ',
    '00007000 05 n 01 puppy 0 001 @ 00004000 n 0000 | a young dog  ',
    '00008000 05 n 01 Rex 0 001 @i 00004000 n 0000 | a famous dog  ',
]
INDEX = ['entity n 1 1 ~ 1 0 00001740', 'animal n 1 2 @ ~ 1 0 00002000', 'beast n 1 1 @ 1 0 00002000',
         'artifact n 1 2 @ ~ 1 0 00003000', 'dog n 2 2 @ ~ 2 0 00008000 00004000', 'domestic_dog n 1 1 @ 1 0 00004000',
         'cat n 1 1 @ 1 0 00005000', 'car n 1 1 @ 1 0 00006000', 'puppy n 1 1 @ 1 0 00007000', 'rex n 1 1 @ 1 0 00008000']


@pytest.fixture
def wordnet_dir(tmp_path):
    lic = '  1 This software and database is being provided to you, the LICENSEE, by  \n'
    (tmp_path / 'data.noun').write_text(lic + '\n'.join(NOUNS) + '\n')
    (tmp_path / 'index.noun').write_text(lic + '\n'.join(INDEX) + '\n')
    return tmp_path


def test_wordnet_fixture(wordnet_dir):
    wn = WordNet('n', root=wordnet_dir)
    assert len(wn) == 8
    dog = wn['dog.n.02']                                   # second sense of 'dog' in the index, after Rex
    assert wn['n00004000'] is dog and wn['rex.n.01'].lemmas == ['Rex']
    assert dog.lemmas == ['dog', 'domestic_dog'] and dog.definition == 'a canine'
    assert dog.examples == ['the dog barked all night', "a dog's life"]
    assert [p.rel for p in dog.pointers] == ['hypernym', 'hyponym', 'instance_hyponym', 'part_meronym']
    assert [s.name for s in wn.lookup('dog')] == ['rex.n.01', 'dog.n.02']
    assert [s.name for s in wn.hypernyms(dog)] == ['animal.n.01']
    assert [s.name for s in wn.hyponyms(dog)] == ['puppy.n.01', 'rex.n.01']
    assert [s.name for s in wn.closure('puppy.n.01')] == ['dog.n.02', 'animal.n.01', 'entity.n.01']
    assert wn.max_depth('puppy.n.01') == 3 and wn.min_depth('rex.n.01') == 3 and wn.max_depth('entity.n.01') == 0
    assert wn.wup_similarity('dog.n.02', 'cat.n.01') == 2 * 2 / (3 + 3)
    assert wn.wup_similarity('puppy.n.01', 'car.n.01') == 2 * 1 / (4 + 3)
    pairs = wn.hypernym_closure('animal.n.01')
    assert sorted(pairs) == sorted([('dog.n.02', 'animal.n.01'), ('cat.n.01', 'animal.n.01'),
                                    ('puppy.n.01', 'dog.n.02'), ('puppy.n.01', 'animal.n.01')])
    assert ('rex.n.01', 'animal.n.01') in wn.hypernym_closure('animal.n.01', instances=True)
    with pytest.raises(KeyError, match='dog.n.01'): wn['dog.n.01']


def test_wordnet_missing_names_the_package(tmp_path, wordnet_dir, monkeypatch):
    with pytest.raises(DataMissingError, match='wordnet-base'): WordNet('n', root=tmp_path / 'none')
    with pytest.raises(ValueError, match='nvar'): WordNet('x', root=wordnet_dir)
    monkeypatch.setenv('DL2021_WORDNET', str(wordnet_dir))
    assert len(WordNet('n')) == 8
    with pytest.raises(DataMissingError, match='wordnet-base'): WordNet('v')      # data.verb is not in the fixture


def test_gloss_and_line_parsing():
    assert parse_gloss('benefit; "for your own good"; "what\'s the good of worrying?"') == \
        ('benefit', ['for your own good', "what's the good of worrying?"])
    assert parse_gloss('a definition; another clause  ') == ('a definition; another clause', [])
    s = parse_data_line('01123148 00 a 01 good 0 004 ! 01125429 a 0101 & 01123879 a 0000 + 04849241 n 0102 '
                        '+ 05142180 n 0101 | having desirable or positive qualities; "a good report card"', 'a')
    assert s.pointers[0] == text.Pointer('antonym', 'a01125429', 1, 1)
    assert s.pointers[1].rel == 'similar_to' and s.pointers[2] == text.Pointer('derivation', 'n04849241', 1, 2)
    v = parse_data_line('00001740 29 v 04 breathe 0 take_a_breath 0 respire 0 suspire 3 002 * 00005041 v 0000 '
                        '$ 00002325 v 0000 02 + 02 00 + 08 00 | draw air into, and expel out of, the lungs', 'v')
    assert v.lemmas == ['breathe', 'take_a_breath', 'respire', 'suspire'] and [p.rel for p in v.pointers] == ['entailment', 'verb_group']
    w = parse_data_line('00020103 00 s 0a a 0 b 0 c 0 d 0 e 0 f 0 g 0 h 0 i 0 j(p) 0 000 | ten words', 'a')
    assert len(w.lemmas) == 10 and w.lemmas[-1] == 'j' and w.pointers == []       # w_cnt is hexadecimal


def test_wu_palmer_hand_made_tree():
    tree = {'entity': [], 'animal': ['entity'], 'artifact': ['entity'], 'dog': ['animal'], 'cat': ['animal'],
            'car': ['artifact'], 'puppy': ['dog'], 'robodog': ['dog', 'artifact']}
    up = tree.__getitem__
    assert wu_palmer('dog', 'cat', up) == 4 / 6
    assert wu_palmer('puppy', 'cat', up) == 4 / 7
    assert wu_palmer('puppy', 'puppy', up) == 1.0
    assert wu_palmer('puppy', 'dog', up) == 6 / 7
    for a in tree:
        for b in tree: assert wu_palmer(a, b, up) == wu_palmer(b, a, up)
    # two parents: the LCS with car is artifact (depth 2); robodog sits 1 step below it, car 1 step
    assert wu_palmer('robodog', 'car', up) == 2 * 2 / (3 + 3)
    # forest: no common ancestor -> simulated root above both, or None
    forest = {'a': [], 'b': ['a'], 'c': []}.__getitem__
    assert wu_palmer('b', 'c', forest) == 2 / (1 + 2 + 0 + 2) and wu_palmer('b', 'c', forest, simulate_root=False) is None


@pytest.fixture(scope='module')
def wn():
    if not HAVE_WORDNET: pytest.skip("Debian's wordnet-base is not installed (make test installs it)")
    return WordNet()


def test_installed_wordnet(wn):
    pos = {p: sum(s.pos == p for s in wn) for p in 'nvasr'}
    assert pos == {'n': 82115, 'v': 13767, 'a': 7463, 's': 10693, 'r': 3621}     # WordNet 3.0's published counts
    dog = wn['dog.n.01']
    assert dog.id == 'n02084071' and dog.examples == ['the dog barked all night']
    assert {s.name for s in wn.hypernyms(dog)} == {'canine.n.02', 'domestic_animal.n.01'}
    assert [s.name for s in wn.related('good.a.01', 'antonym')] == ['bad.a.01']
    assert abs(wn.wup_similarity('dog.n.01', 'cat.n.01') - 0.8571428571428571) < 1e-12   # NLTK's documented values
    assert wn.wup_similarity('hit.v.01', 'slap.v.01') == 0.25
    assert wn.max_depth('dog.n.01') == 13 and wn.min_depth('dog.n.01') == 8
    pairs = wn.hypernym_closure('mammal.n.01')
    nodes = {n for p in pairs for n in p}
    assert 1100 < len(nodes) < 1250 and ('dog.n.01', 'mammal.n.01') in pairs and ('dog.n.01', 'canine.n.02') in pairs
    assert not any(b == 'animal.n.01' for a, b in pairs)                           # closure stays inside the subtree
    assert len(pairs) == len(set(pairs))
