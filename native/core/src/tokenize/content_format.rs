//! Which content format vLLM hands a chat template (`--chat-template-content-format
//! auto`, vLLM 0.33.0 `vllm/renderers/hf.py` `_detect_content_format`), and
//! whether it sees the `developer` role (`_detect_developer_role_support`).
//!
//! Contract: `detect(source)` equals vLLM's detection on the same template text:
//! `OpenAi` when some `for` loop iterates over a message's content (a loop over
//! `messages`, or a name assigned from it, a slice, a filter, a test or a
//! namespace alias of it, binds the message; a loop over `<message>.content`,
//! over a macro parameter that some call passes `<message>.content`, or over a
//! top-level name `content` outside macros is a content loop), else `String`.
//! vLLM walks jinja2's AST; this walks minijinja's, visiting nodes in the same
//! document order and mapping node kinds one to one (jinja2's `Getitem` with a
//! slice is minijinja's `Slice`, `NSRef` a `GetAttr` target; a `{% call %}`
//! block is not a macro in jinja2, so its `caller` macro is not one here).
//! Failure modes mirror vLLM's: a template that does not parse, and a matching
//! loop whose target is a tuple (vLLM's assertion fails inside its `try`), give
//! the default, `String`.

use std::collections::{HashMap, HashSet, VecDeque};

use minijinja::machinery::{self, WhitespaceConfig, ast};
use minijinja::syntax::SyntaxConfig;

/// vLLM's `ChatTemplateContentFormat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentFormat {
    /// Content flattened to one string (text parts joined with "\n").
    String,
    /// Content kept as a list of `{"type": "text", "text": ...}` parts.
    OpenAi,
}

impl ContentFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ContentFormat::String => "string",
            ContentFormat::OpenAi => "openai",
        }
    }
}

/// vLLM converts `developer` messages to `system` for templates without the
/// quoted word `"developer"` / `'developer'` in their text.
pub fn supports_developer_role(source: &str) -> bool {
    source.contains("\"developer\"") || source.contains("'developer'")
}

/// The content format of a template's text (after `{% generation %}` tags are
/// rewritten, which adds no loops, assignments, macros or calls).
pub fn detect(source: &str) -> ContentFormat {
    let Ok(root) =
        machinery::parse(source, "chat_template", SyntaxConfig, WhitespaceConfig::default())
    else {
        return ContentFormat::String;
    };
    let mut nodes = Nodes::default();
    nodes.stmt(&root);
    detect_in(&nodes).unwrap_or(ContentFormat::String)
}

/// Loops, assignments, macros and calls in jinja2's `find_all` order (pre-order).
#[derive(Default)]
struct Nodes<'n, 'a> {
    fors: Vec<&'n ast::ForLoop<'a>>,
    sets: Vec<&'n ast::Set<'a>>,
    /// Each macro with the range of `fors` indices inside its body.
    macros: Vec<(&'n ast::Macro<'a>, std::ops::Range<usize>)>,
    calls: Vec<&'n ast::Call<'a>>,
}

impl<'n, 'a> Nodes<'n, 'a> {
    fn stmts(&mut self, list: &'n [ast::Stmt<'a>]) {
        for s in list {
            self.stmt(s);
        }
    }

    fn stmt(&mut self, s: &'n ast::Stmt<'a>) {
        match s {
            ast::Stmt::Template(t) => self.stmts(&t.children),
            ast::Stmt::EmitExpr(e) => self.expr(&e.expr),
            ast::Stmt::EmitRaw(_) | ast::Stmt::Continue(_) | ast::Stmt::Break(_) => {}
            ast::Stmt::ForLoop(f) => {
                self.fors.push(f);
                self.expr(&f.target);
                self.expr(&f.iter);
                self.stmts(&f.body);
                self.stmts(&f.else_body);
                if let Some(e) = &f.filter_expr {
                    self.expr(e);
                }
            }
            ast::Stmt::IfCond(i) => {
                self.expr(&i.expr);
                self.stmts(&i.true_body);
                self.stmts(&i.false_body);
            }
            ast::Stmt::WithBlock(w) => {
                for (target, _) in &w.assignments {
                    self.expr(target);
                }
                for (_, value) in &w.assignments {
                    self.expr(value);
                }
                self.stmts(&w.body);
            }
            ast::Stmt::Set(set) => {
                self.sets.push(set);
                self.expr(&set.target);
                self.expr(&set.expr);
            }
            ast::Stmt::SetBlock(b) => {
                self.expr(&b.target);
                if let Some(f) = &b.filter {
                    self.expr(f);
                }
                self.stmts(&b.body);
            }
            ast::Stmt::AutoEscape(a) => {
                self.expr(&a.enabled);
                self.stmts(&a.body);
            }
            ast::Stmt::FilterBlock(f) => {
                self.stmts(&f.body);
                self.expr(&f.filter);
            }
            ast::Stmt::Macro(m) => {
                let at = self.macros.len();
                let first = self.fors.len();
                self.macros.push((m, first..first));
                self.macro_parts(m);
                self.macros[at].1 = first..self.fors.len();
            }
            ast::Stmt::CallBlock(c) => {
                self.call(&c.call);
                self.macro_parts(&c.macro_decl);
            }
            ast::Stmt::Do(d) => self.call(&d.call),
        }
    }

    fn macro_parts(&mut self, m: &'n ast::Macro<'a>) {
        for e in m.args.iter().chain(&m.defaults) {
            self.expr(e);
        }
        self.stmts(&m.body);
    }

    fn call(&mut self, c: &'n ast::Call<'a>) {
        self.calls.push(c);
        self.expr(&c.expr);
        self.args(&c.args);
    }

    fn args(&mut self, args: &'n [ast::CallArg<'a>]) {
        for a in args {
            match a {
                ast::CallArg::Pos(e)
                | ast::CallArg::Kwarg(_, e)
                | ast::CallArg::PosSplat(e)
                | ast::CallArg::KwargSplat(e) => self.expr(e),
            }
        }
    }

    fn expr(&mut self, e: &'n ast::Expr<'a>) {
        match e {
            ast::Expr::Var(_) | ast::Expr::Const(_) => {}
            ast::Expr::Slice(s) => {
                self.expr(&s.expr);
                for part in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                    self.expr(part);
                }
            }
            ast::Expr::UnaryOp(u) => self.expr(&u.expr),
            ast::Expr::BinOp(b) => {
                self.expr(&b.left);
                self.expr(&b.right);
            }
            ast::Expr::Compare(c) => {
                self.expr(&c.expr);
                for op in &c.ops {
                    self.expr(&op.expr);
                }
            }
            ast::Expr::IfExpr(i) => {
                self.expr(&i.test_expr);
                self.expr(&i.true_expr);
                if let Some(f) = &i.false_expr {
                    self.expr(f);
                }
            }
            ast::Expr::Filter(f) => {
                if let Some(x) = &f.expr {
                    self.expr(x);
                }
                self.args(&f.args);
            }
            ast::Expr::Test(t) => {
                self.expr(&t.expr);
                self.args(&t.args);
            }
            ast::Expr::GetAttr(g) => self.expr(&g.expr),
            ast::Expr::GetItem(g) => {
                self.expr(&g.expr);
                self.expr(&g.subscript_expr);
            }
            ast::Expr::Call(c) => self.call(c),
            ast::Expr::List(l) => {
                for x in &l.items {
                    self.expr(x);
                }
            }
            ast::Expr::Map(m) => {
                for (k, v) in m.keys.iter().zip(&m.values) {
                    self.expr(k);
                    self.expr(v);
                }
            }
        }
    }
}

/// vLLM's `_is_var_access`: a load of `var`; a dotted `var` ("ns.rest") is an
/// attribute of the namespace.
fn is_var_access(e: &ast::Expr<'_>, var: &str) -> bool {
    match e {
        ast::Expr::Var(v) => v.id == var,
        ast::Expr::GetAttr(g) => match var.rsplit_once('.') {
            Some((base, attr)) => g.name == attr && is_var_access(&g.expr, base),
            None => false,
        },
        _ => false,
    }
}

/// vLLM's `_is_attr_access`: `var[key]` (a constant key) or `var.key`.
fn is_attr_access(e: &ast::Expr<'_>, var: &str, key: &str) -> bool {
    match e {
        ast::Expr::GetItem(g) => {
            is_var_access(&g.expr, var)
                && matches!(&g.subscript_expr, ast::Expr::Const(c) if c.value.as_str() == Some(key))
        }
        ast::Expr::GetAttr(g) => is_var_access(&g.expr, var) && g.name == key,
        _ => false,
    }
}

/// vLLM's `_is_var_or_elems_access`: through filters, tests and slices.
fn is_var_or_elems_access(e: &ast::Expr<'_>, var: &str, key: Option<&str>) -> bool {
    match e {
        ast::Expr::Filter(f) => {
            f.expr.as_ref().is_some_and(|x| is_var_or_elems_access(x, var, key))
        }
        ast::Expr::Test(t) => is_var_or_elems_access(&t.expr, var, key),
        ast::Expr::Slice(s) => is_var_or_elems_access(&s.expr, var, key),
        _ => match key {
            Some(k) => is_attr_access(e, var, k),
            None => is_var_access(e, var),
        },
    }
}

/// vLLM's `_attr_dotted_name` of an attribute assignment target.
fn dotted_name(e: &ast::Expr<'_>) -> Option<String> {
    match e {
        ast::Expr::Var(v) => Some(v.id.to_string()),
        ast::Expr::GetAttr(g) => dotted_name(&g.expr).map(|base| format!("{base}.{}", g.name)),
        _ => None,
    }
}

/// vLLM's `_iter_nodes_assign_var_or_elems`: `root` and every name (or namespace
/// alias) assigned from it, transitively.
fn names_bound_to(sets: &[&ast::Set<'_>], root: &str) -> HashSet<String> {
    let mut names = HashSet::from([root.to_string()]);
    let mut queue = VecDeque::from([root.to_string()]);
    while let Some(related) = queue.pop_front() {
        for set in sets {
            let (lhs, rhs) = (&set.target, &set.expr);
            let mut found = Vec::new();
            if let ast::Expr::Var(v) = lhs
                && is_var_or_elems_access(rhs, &related, None)
            {
                found.push(v.id.to_string());
            }
            match (lhs, rhs) {
                (ast::Expr::Var(v), ast::Expr::Call(c)) if matches!(&c.expr, ast::Expr::Var(n) if n.id == "namespace") => {
                    for arg in &c.args {
                        if let ast::CallArg::Kwarg(key, value) = arg
                            && is_var_or_elems_access(value, &related, None)
                        {
                            found.push(format!("{}.{key}", v.id));
                        }
                    }
                }
                (ast::Expr::GetAttr(_), _) if is_var_or_elems_access(rhs, &related, None) => {
                    found.extend(dotted_name(lhs));
                }
                _ => {}
            }
            for name in found {
                if name != related && names.insert(name.clone()) {
                    queue.push_back(name);
                }
            }
        }
    }
    names
}

/// `None` where vLLM's detection raises (and so returns its default).
fn detect_in(nodes: &Nodes<'_, '_>) -> Option<ContentFormat> {
    let target_name = |f: &ast::ForLoop<'_>| match &f.target {
        ast::Expr::Var(v) => Some(v.id.to_string()),
        _ => None,
    };
    // `_iter_nodes_assign_messages_item`, consumed whole (its assertion included).
    let messages = names_bound_to(&nodes.sets, "messages");
    let mut message_vars = Vec::new();
    for f in &nodes.fors {
        if messages.iter().any(|m| is_var_or_elems_access(&f.iter, m, None)) {
            message_vars.push(target_name(f)?);
        }
    }
    let is_content_of_message = |e: &ast::Expr<'_>| {
        message_vars.iter().any(|m| is_var_or_elems_access(e, m, Some("content")))
    };
    // Macro parameters some call passes a message's content to.
    let mut params_by_loop: HashMap<usize, HashSet<&str>> = HashMap::new();
    let mut loops_in_macros: HashSet<usize> = HashSet::new();
    for (m, loops) in &nodes.macros {
        let params: Vec<&str> = m
            .args
            .iter()
            .filter_map(|a| match a {
                ast::Expr::Var(v) => Some(v.id),
                _ => None,
            })
            .collect();
        let mut content_params: HashSet<&str> = HashSet::new();
        for call in &nodes.calls {
            if !matches!(&call.expr, ast::Expr::Var(n) if n.id == m.name) {
                continue;
            }
            let mut position = 0;
            for arg in &call.args {
                match arg {
                    ast::CallArg::Pos(e) => {
                        if position < params.len() && is_content_of_message(e) {
                            content_params.insert(params[position]);
                        }
                        position += 1;
                    }
                    ast::CallArg::Kwarg(key, e) => {
                        if let Some(p) = params.iter().find(|p| *p == key)
                            && is_content_of_message(e)
                        {
                            content_params.insert(p);
                        }
                    }
                    _ => {}
                }
            }
        }
        for i in loops.clone() {
            loops_in_macros.insert(i);
            if !content_params.is_empty() {
                params_by_loop.insert(i, content_params.clone());
            }
        }
    }
    // `_iter_nodes_assign_content_item`: the first content loop decides.
    for (i, f) in nodes.fors.iter().enumerate() {
        let content_loop = is_content_of_message(&f.iter)
            || match &f.iter {
                ast::Expr::Var(v) => {
                    params_by_loop.get(&i).is_some_and(|p| p.contains(v.id))
                        || (!loops_in_macros.contains(&i) && v.id == "content")
                }
                _ => false,
            };
        if content_loop {
            target_name(f)?;
            return Some(ContentFormat::OpenAi);
        }
    }
    Some(ContentFormat::String)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(src: &str) -> &'static str {
        detect(src).as_str()
    }

    #[test]
    fn loops_over_message_content_are_openai() {
        assert_eq!(fmt("{% for m in messages %}{{ m.content }}{% endfor %}"), "string");
        assert_eq!(
            fmt(
                "{% for m in messages %}{% for p in m['content'] %}{{ p.text }}{% endfor %}{% endfor %}"
            ),
            "openai"
        );
        assert_eq!(
            fmt(
                "{% set loop_messages = messages[1:] %}{% for m in loop_messages %}{% for p in m.content | list %}{% endfor %}{% endfor %}"
            ),
            "openai"
        );
    }

    #[test]
    fn namespace_aliases_and_macros() {
        let ns = "{% set ns = namespace(rest=messages) %}{% for m in ns.rest %}{% for p in m.content %}{% endfor %}{% endfor %}";
        assert_eq!(fmt(ns), "openai");
        let via_set = "{% set ns = namespace(x=1) %}{% set ns.rest = messages %}{% for m in ns.rest %}{% for p in m.content %}{% endfor %}{% endfor %}";
        assert_eq!(fmt(via_set), "openai");
        let mac = "{% macro r(c) %}{% for p in c %}{{ p }}{% endfor %}{% endmacro %}{% for m in messages %}{{ r(m.content) }}{% endfor %}";
        assert_eq!(fmt(mac), "openai");
        let kw = "{% macro r(x, c=none) %}{% for p in c %}{{ p }}{% endfor %}{% endmacro %}{% for m in messages %}{{ r(1, c=m.content) }}{% endfor %}";
        assert_eq!(fmt(kw), "openai");
        // A loop over `content` inside a macro that is never passed content.
        let unused = "{% macro r(content) %}{% for p in content %}{% endfor %}{% endmacro %}{% for m in messages %}{{ m.content }}{% endfor %}";
        assert_eq!(fmt(unused), "string");
        // At top level, any loop over a name `content` counts.
        assert_eq!(fmt("{% for p in content %}{% endfor %}"), "openai");
    }

    #[test]
    fn vllm_defaults_to_string_where_it_raises() {
        assert_eq!(fmt("{% for m in messages %}{% endfor"), "string");
        assert_eq!(fmt("{% for a, b in messages %}{% endfor %}"), "string");
        assert_eq!(
            fmt("{% for m in messages %}{% for a, b in m.content %}{% endfor %}{% endfor %}"),
            "string"
        );
    }

    #[test]
    fn developer_role_support_is_the_quoted_word() {
        assert!(supports_developer_role("{% if m.role == 'developer' %}"));
        assert!(supports_developer_role(r#"{% if m.role == "developer" %}"#));
        assert!(!supports_developer_role("{# developer #}"));
    }
}
