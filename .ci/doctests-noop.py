#!/usr/bin/env python3
"""List doc tests that assert nothing: Rust code blocks in doc comments (/// and //!) and in
crate READMEs that contain no assert*/panic/unwrap_err/matches check, or whose only checks
compare two constant enum variants (assert_ne!(A::X, A::Y)). no_run/ignore/compile_fail/text
blocks are listed separately (they never run)."""
import re, sys, glob, os
ROOT = sys.argv[1] if len(sys.argv) > 1 else '.'
EXCLUDE = ('crates/degrade-core/src/degrade/', 'crates/degrade-core/src/limit/')
CHECK = re.compile(r'\bassert(_eq|_ne)?!|\bdebug_assert|\bpanic!|unwrap_err\(|expect_err\(|\bmatches!|\bprop_assert')
TAUT = re.compile(r'assert_ne!\(\s*([A-Z]\w*(?:::\w+)+)\s*,\s*([A-Z]\w*(?:::\w+)+)\s*\)')
def blocks(path):
    text = open(path, encoding='utf-8').read().splitlines()
    md = path.endswith('.md')
    cur = None
    for n, line in enumerate(text, 1):
        if md:
            body = line
        else:
            m = re.match(r'\s*(///|//!)\s?(.*)$', line)
            if not m:
                if cur is not None: cur = None
                continue
            body = m.group(2)
        fence = re.match(r'\s*```(.*)$', body)
        if fence:
            if cur is None:
                attrs = fence.group(1).strip()
                if md and attrs not in ('rust',) and not attrs.startswith('rust,'):
                    cur = ('skip', n, []); continue
                cur = (attrs, n, [])
            else:
                if cur[0] != 'skip': yield cur
                cur = None
            continue
        if cur is not None:
            cur[2].append(body)
for f in sorted(glob.glob(os.path.join(ROOT, 'crates/*/src/**/*.rs'), recursive=True) + glob.glob(os.path.join(ROOT, 'crates/*/README.md'))):
    rel = os.path.relpath(f, ROOT)
    if rel.startswith(EXCLUDE): continue
    for attrs, line, body in blocks(f):
        a = attrs.replace('rust', '').strip(',').strip()
        if any(x in a for x in ('text', 'toml', 'json', 'sh', 'console', 'yaml')): continue
        code = '\n'.join(body)
        kind = None
        if any(x in a for x in ('no_run', 'ignore', 'compile_fail')):
            kind = 'never-runs(' + a + ')'
        elif not CHECK.search(code):
            kind = 'no-check'
        else:
            checks = [l for l in body if CHECK.search(l)]
            lits = dict(re.findall(r'let\s+(\w+)\s*=\s*([A-Z]\w*)::[A-Z]\w*\b', code))
            def taut(l):
                if TAUT.search(l): return True
                # a variable just bound to an enum variant, compared with the same enum
                for v, ty in lits.items():
                    if re.search(r'\b' + v + r'\b', l) and ty + '::' in l:
                        return True
                return False
            if checks and all(taut(l) for l in checks):
                kind = 'tautology'
        if kind:
            print(f'{rel}:{line}: {kind}')
