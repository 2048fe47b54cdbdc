"""Every exported module imports from the installed package alone, and its code refers to no notebook-only name.

fastai's course22p2 shipped `miniai.diffusion` functions that referenced names defined only in a notebook; they
imported fine and failed when called. Here every function and method of every module is checked: each global name its
bytecode loads must exist in the module (or be a builtin).
"""
import builtins, dis, importlib, inspect, pkgutil, subprocess, sys, types
from pathlib import Path
import pytest
import dl2021

MODULES = sorted(m.name for m in pkgutil.iter_modules(dl2021.__path__) if not m.name.startswith('_'))


def test_modules_exist():
    assert {'core', 'data', 'train', 'presets', 'results', 'resnet'} <= set(MODULES)


@pytest.mark.parametrize('name', MODULES)
def test_imports_in_a_clean_process(name, tmp_path):
    "Import each module in a fresh interpreter, from a folder that has no notebooks."
    r = subprocess.run([sys.executable, '-c', f'import dl2021.{name} as m; print(m.__file__)'],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert 'site-packages' in r.stdout or str(Path(dl2021.__file__).parent) in r.stdout


def _code_objects(code):
    yield code
    for c in code.co_consts:
        if isinstance(c, types.CodeType): yield from _code_objects(c)


def _globals_loaded(fn):
    for code in _code_objects(fn.__code__):
        for ins in dis.get_instructions(code):
            if ins.opname in ('LOAD_GLOBAL', 'LOAD_NAME'): yield ins.argval


def _functions(mod):
    for obj in vars(mod).values():
        if getattr(obj, '__module__', None) != mod.__name__: continue
        if inspect.isfunction(obj): yield obj
        elif inspect.isclass(obj):
            for v in vars(obj).values():
                f = v.fget if isinstance(v, property) else getattr(v, '__func__', v)
                if inspect.isfunction(f): yield f


@pytest.mark.parametrize('name', MODULES)
def test_no_undefined_globals(name):
    mod = importlib.import_module(f'dl2021.{name}')
    missing = {f'{f.__qualname__}: {g}' for f in _functions(mod) for g in _globals_loaded(f)
               if g not in f.__globals__ and not hasattr(builtins, g)}
    assert not missing, f'dl2021.{name} refers to names it does not define: {sorted(missing)}'


def test_the_check_can_fail():
    "A function using a name its module lacks is caught (the course22p2 failure)."
    ns = {}
    exec('def f():\n    return notebook_only_name + 1', ns)
    f = ns['f']
    assert 'notebook_only_name' in set(_globals_loaded(f)) and 'notebook_only_name' not in f.__globals__


def test_all_names_exist():
    for name in MODULES:
        mod = importlib.import_module(f'dl2021.{name}')
        for n in getattr(mod, '__all__', []): assert hasattr(mod, n), f'dl2021.{name}.__all__ names missing {n}'
