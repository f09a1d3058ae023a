//! PyTorch's `torch.save` files (`.ckpt`, `.bin`, `.pth`, `.pt`: a zip of a pickle and raw
//! storages) read without executing anything.
//!
//! A checkpoint holds far more than weights: Lightning adds `hyper_parameters` (the notebook's
//! `Config` dataclass from `__main__`, a `torch.device`), `optimizer_states` (dicts keyed by
//! integers), `loops`, `callbacks`... A strict reader fails on the first class it does not know.
//! This one is a small pickle machine that builds every object it is given as an opaque record of
//! its class name and arguments — no class is looked up, nothing is called — except the few torch
//! functions that rebuild a tensor from a storage, which become lazily read [`TensorSnapshot`]s.
//! Sizes claimed by the file are checked against the bytes it really holds before anything is
//! allocated.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use burn::module::ParamId;
use burn::tensor::{DType, TensorData};
use burn_store::{TensorSnapshot, TensorSnapshotError};

/// Why a torch file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TorchFileError {
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A torch file's tensors with their dotted names, and what was left out.
pub struct TorchFile {
    /// Every tensor reachable through string-keyed dicts from the selected root.
    pub tensors: BTreeMap<String, TensorSnapshot>,
    /// What the file holds besides those tensors, one line each (top-level entries skipped,
    /// non-tensor values, classes that were recorded but not built).
    pub skipped: Vec<String>,
}

/// A decoded pickle value. Containers are shared (`Rc`) because the pickle memo refers back to
/// them and later opcodes fill them in place.
#[derive(Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too wide for `i64`, kept as its little-endian two's-complement bytes.
    BigInt,
    Float(f64),
    Str(Rc<str>),
    /// Bytes (never needed for weights: only their presence is kept).
    Bytes,
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Set(Rc<RefCell<Vec<Value>>>),
    /// A class or function named by the file (never looked up).
    Global(Rc<str>),
    /// An instance or call result of a global that is not a tensor rebuild.
    Object(Rc<Opaque>),
    /// `('storage', type, key, location, numel)` from a persistent id.
    Storage(Rc<Storage>),
    Tensor(Rc<TensorRef>),
}

struct Opaque {
    class: Rc<str>,
    #[allow(dead_code)] // kept for debugging and future readers of opaque objects
    args: Value,
    state: RefCell<Option<Value>>,
}

struct Storage {
    key: String,
    dtype: DType,
    elem: usize,
    numel: usize,
}

struct TensorRef {
    storage: Rc<Storage>,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// Storage class name → element type and size.
fn storage_dtype(name: &str) -> Option<(DType, usize)> {
    let short = name.rsplit('.').next().unwrap_or(name);
    Some(match short {
        "DoubleStorage" => (DType::F64, 8),
        "FloatStorage" => (DType::F32, 4),
        "HalfStorage" => (DType::F16, 2),
        "BFloat16Storage" => (DType::BF16, 2),
        "LongStorage" => (DType::I64, 8),
        "IntStorage" => (DType::I32, 4),
        "ShortStorage" => (DType::I16, 2),
        "CharStorage" => (DType::I8, 1),
        "ByteStorage" | "UntypedStorage" => (DType::U8, 1),
        "BoolStorage" => (DType::Bool(burn::tensor::BoolStore::Native), 1),
        _ => return None,
    })
}

/// Runs a pickle program over `bytes`; `globals` collects every class name the file mentions.
struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    globals: BTreeSet<String>,
    containers: Containers,
    /// Every storage a persistent id named (a legacy file's storages follow its pickles).
    storages: Vec<Rc<Storage>>,
}

/// What a pickle program left: its value, the classes it named, its containers (dropped last),
/// the bytes it took and the storages it named.
type Ran = (Value, BTreeSet<String>, Containers, usize, Vec<Rc<Storage>>);

impl<'a> Machine<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            globals: BTreeSet::new(),
            containers: Containers::default(),
            storages: Vec::new(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            format!(
                "pickle truncated: {n} bytes claimed at offset {}, {} left",
                self.pos,
                self.bytes.len() - self.pos
            )
        })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn len64(&mut self) -> Result<usize, String> {
        usize::try_from(self.u64()?).map_err(|_| "pickle length does not fit in memory".to_string())
    }
    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.bytes[self.pos..];
        let n =
            rest.iter().position(|&b| b == b'\n').ok_or("pickle truncated: unterminated line")?;
        let s =
            std::str::from_utf8(&rest[..n]).map_err(|_| "pickle line is not UTF-8".to_string())?;
        self.pos += n + 1;
        Ok(s)
    }
    fn text(&mut self, n: usize) -> Result<Value, String> {
        let b = self.take(n)?;
        Ok(Value::Str(String::from_utf8_lossy(b).into()))
    }

    fn push(&mut self, v: Value) {
        // A container pushed for the first time (not from the memo) was just built.
        let fresh = match &v {
            Value::List(rc) | Value::Set(rc) => Rc::strong_count(rc) == 1,
            Value::Dict(rc) => Rc::strong_count(rc) == 1,
            Value::Object(rc) => Rc::strong_count(rc) == 1,
            _ => false,
        };
        if fresh {
            self.containers.0.push(v.clone());
        }
        self.stack.push(v);
    }
    fn pop(&mut self) -> Result<Value, String> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("pickle stack underflow".into());
        }
        Ok(self.stack.pop().expect("checked"))
    }
    fn top(&self) -> Result<&Value, String> {
        self.stack.last().ok_or_else(|| "pickle stack is empty".to_string())
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self.marks.pop().ok_or("pickle MARK missing")?;
        Ok(self.stack.split_off(mark))
    }
    fn memo_get(&self, idx: u32) -> Result<Value, String> {
        self.memo.get(&idx).cloned().ok_or_else(|| format!("pickle memo entry {idx} is missing"))
    }
    fn memo_put(&mut self, idx: u32) -> Result<(), String> {
        let v = self.top()?.clone();
        self.memo.insert(idx, v);
        Ok(())
    }
    fn global(&mut self, module: &str, name: &str) -> Value {
        let full = format!("{module}.{name}");
        self.globals.insert(full.clone());
        Value::Global(full.into())
    }

    /// The root value, the globals named, and the containers built (kept until the caller is
    /// done with the root; dropping them frees everything, cycles included).
    fn run(self) -> Result<(Value, BTreeSet<String>, Containers), String> {
        self.run_counted().map(|(v, globals, containers, _, _)| (v, globals, containers))
    }

    fn run_counted(mut self) -> Result<Ran, String> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(format!("pickle protocol {v} is newer than 5"));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint only
                }
                b'.' => {
                    let v = self.pop()?;
                    let containers = std::mem::take(&mut self.containers);
                    let storages = std::mem::take(&mut self.storages);
                    let globals = std::mem::take(&mut self.globals);
                    return Ok((v, globals, containers, self.pos, storages));
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    // POP takes the top item, or the mark itself when nothing is above it.
                    if self.marks.last() == Some(&self.stack.len()) {
                        self.marks.pop();
                    } else {
                        self.pop()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v);
                }
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"));
                    self.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.u8()? as usize } else { self.u32()? as usize };
                    let b = self.take(n)?;
                    self.push(long_from_bytes(b));
                }
                b'I' | b'L' => {
                    let line = self.line()?.trim_end_matches('L');
                    let v = match line {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        _ => line.parse::<i64>().map(Value::Int).unwrap_or(Value::BigInt),
                    };
                    self.push(v);
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes"));
                    self.push(Value::Float(v));
                }
                b'F' => {
                    let line = self.line()?;
                    let v = line
                        .trim()
                        .parse::<f64>()
                        .map_err(|_| format!("bad float {line:?} in pickle"))?;
                    self.push(Value::Float(v));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.text(n)?;
                    self.push(v);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.text(n)?;
                    self.push(v);
                }
                0x8d => {
                    let n = self.len64()?;
                    let v = self.text(n)?;
                    self.push(v);
                }
                b'V' | b'S' => {
                    let line = self.line()?;
                    self.push(Value::Str(line.trim_matches(|c| c == '\'' || c == '"').into()));
                }
                b'T' | b'U' | b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'T' | b'B' => self.u32()? as usize,
                        b'U' | b'C' => self.u8()? as usize,
                        _ => self.len64()?,
                    };
                    let b = self.take(n)?;
                    self.push(if matches!(op, b'T' | b'U') {
                        Value::Str(String::from_utf8_lossy(b).into())
                    } else {
                        Value::Bytes
                    });
                }
                0x97 | 0x98 => return Err("out-of-band pickle buffers are not supported".into()),
                b')' => self.push(Value::Tuple(Rc::new(Vec::new()))),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(Rc::new(items)));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let floor = self.marks.last().copied().unwrap_or(0);
                    if self.stack.len() < floor + n {
                        return Err("pickle stack underflow".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Value::Tuple(Rc::new(items)));
                }
                b']' => self.push(Value::List(Rc::default())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b'}' => self.push(Value::Dict(Rc::default())),
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items)?;
                    self.push(Value::Dict(Rc::new(RefCell::new(pairs))));
                }
                0x8f => self.push(Value::Set(Rc::default())),
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Value::Set(Rc::new(RefCell::new(items))));
                }
                b'a' => {
                    let v = self.pop()?;
                    extend(self.top()?, vec![v])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    extend(self.top()?, items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    set_items(self.top()?, vec![(k, v)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items)?;
                    set_items(self.top()?, pairs)?;
                }
                b'p' => {
                    let idx =
                        self.line()?.parse::<u32>().map_err(|_| "bad PUT index".to_string())?;
                    self.memo_put(idx)?;
                }
                b'q' => {
                    let idx = self.u8()? as u32;
                    self.memo_put(idx)?;
                }
                b'r' => {
                    let idx = self.u32()?;
                    self.memo_put(idx)?;
                }
                0x94 => {
                    let idx = self.memo.len() as u32;
                    self.memo_put(idx)?;
                }
                b'g' => {
                    let idx =
                        self.line()?.parse::<u32>().map_err(|_| "bad GET index".to_string())?;
                    let v = self.memo_get(idx)?;
                    self.push(v);
                }
                b'h' => {
                    let idx = self.u8()? as u32;
                    let v = self.memo_get(idx)?;
                    self.push(v);
                }
                b'j' => {
                    let idx = self.u32()?;
                    let v = self.memo_get(idx)?;
                    self.push(v);
                }
                b'c' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    let g = self.global(&module, &name);
                    self.push(g);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(m), Value::Str(n)) = (module, name) else {
                        return Err("STACK_GLOBAL needs two strings".into());
                    };
                    let g = self.global(&m, &n);
                    self.push(g);
                }
                b'i' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    let args = self.pop_mark()?;
                    let g = self.global(&module, &name);
                    self.push(call(g, Value::Tuple(Rc::new(args)))?);
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err("OBJ without a class".into());
                    }
                    let class = items.remove(0);
                    self.push(call(class, Value::Tuple(Rc::new(items)))?);
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = persistent(pid)?;
                    if let Value::Storage(s) = &storage {
                        self.storages.push(s.clone());
                    }
                    self.push(storage);
                }
                b'P' => return Err("text persistent ids are not torch's".into()),
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    self.push(call(f, args)?);
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.push(call(cls, args)?);
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.push(call(cls, args)?);
                }
                b'b' => {
                    let state = self.pop()?;
                    build(self.top()?, state);
                }
                0x82..=0x84 => {
                    return Err("pickle extension registry codes are not supported".into())
                }
                other => {
                    return Err(format!(
                        "unknown pickle opcode 0x{other:02x} at offset {}",
                        self.pos - 1
                    ))
                }
            }
        }
    }
}

/// Drops a value without recursion: a hostile file can nest containers deeper than any stack,
/// and `Rc`'s own drop would recurse once per level. A container shared elsewhere is only
/// released here; its last holder frees it the same way.
fn dispose(values: impl IntoIterator<Item = Value>) {
    let mut work: Vec<Value> = values.into_iter().collect();
    while let Some(v) = work.pop() {
        match v {
            Value::Tuple(rc) => {
                if let Ok(items) = Rc::try_unwrap(rc) {
                    work.extend(items);
                }
            }
            Value::List(rc) | Value::Set(rc) => {
                if let Ok(cell) = Rc::try_unwrap(rc) {
                    work.extend(cell.into_inner());
                }
            }
            Value::Dict(rc) => {
                if let Ok(cell) = Rc::try_unwrap(rc) {
                    work.extend(cell.into_inner().into_iter().flat_map(|(k, v)| [k, v]));
                }
            }
            Value::Object(rc) => {
                if let Ok(o) = Rc::try_unwrap(rc) {
                    work.push(o.args);
                    work.extend(o.state.into_inner());
                }
            }
            _ => {}
        }
    }
}

/// Every mutable container a pickle built. The memo lets a file put a container inside itself
/// (`a = []; a.append(a)`, or a dict holding itself), a cycle that `Rc` never frees and
/// [`dispose`] cannot unwrap: dropping this empties each container first, so nothing is shared
/// in a cycle any more, then frees what they held without recursion.
#[derive(Default)]
struct Containers(Vec<Value>);

impl Drop for Containers {
    fn drop(&mut self) {
        let mut held = Vec::new();
        for c in &self.0 {
            match c {
                Value::List(rc) | Value::Set(rc) => held.append(&mut rc.borrow_mut()),
                Value::Dict(rc) => held.extend(rc.take().into_iter().flat_map(|(k, v)| [k, v])),
                Value::Object(o) => held.extend(o.state.take()),
                _ => {}
            }
        }
        dispose(held.into_iter().chain(self.0.drain(..)));
    }
}

impl Drop for Machine<'_> {
    fn drop(&mut self) {
        dispose(self.stack.drain(..).chain(self.memo.drain().map(|(_, v)| v)));
    }
}

fn long_from_bytes(b: &[u8]) -> Value {
    if b.is_empty() {
        return Value::Int(0);
    }
    if b.len() > 8 {
        return Value::BigInt;
    }
    let negative = b[b.len() - 1] & 0x80 != 0;
    let mut buf = if negative { [0xffu8; 8] } else { [0u8; 8] };
    buf[..b.len()].copy_from_slice(b);
    Value::Int(i64::from_le_bytes(buf))
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("odd number of items for a dict".into());
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn extend(target: &Value, items: Vec<Value>) -> Result<(), String> {
    match target {
        Value::List(l) | Value::Set(l) => l.borrow_mut().extend(items),
        // `list.extend` on a subclass instance: recorded as its state, never interpreted.
        Value::Object(_) => {}
        _ => return Err("APPEND to something that is not a list".into()),
    }
    Ok(())
}

fn set_items(target: &Value, items: Vec<(Value, Value)>) -> Result<(), String> {
    match target {
        Value::Dict(d) => {
            let mut d = d.borrow_mut();
            for (k, v) in items {
                match d.iter_mut().find(|(old, _)| same_key(old, &k)) {
                    Some(slot) => slot.1 = v,
                    None => d.push((k, v)),
                }
            }
        }
        Value::Object(_) => {}
        _ => return Err("SETITEM on something that is not a dict".into()),
    }
    Ok(())
}

fn same_key(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Str(a), Value::Str(b)) => a == b,
        (Value::Int(a), Value::Int(b)) => a == b,
        _ => false,
    }
}

/// BUILD: an object's `__setstate__`. Recorded on opaque objects; a dict subclass's (or
/// OrderedDict's) attributes are not its items, so they are dropped.
fn build(target: &Value, state: Value) {
    if let Value::Object(o) = target {
        *o.state.borrow_mut() = Some(state);
    }
}

fn int_of(v: &Value, what: &str) -> Result<usize, String> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as usize),
        _ => Err(format!("tensor {what} is not a non-negative integer")),
    }
}

fn ints_of(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(t) => t.iter().map(|x| int_of(x, what)).collect(),
        Value::List(l) => l.borrow().iter().map(|x| int_of(x, what)).collect(),
        _ => Err(format!("tensor {what} is not a tuple")),
    }
}

fn persistent(pid: Value) -> Result<Value, String> {
    let Value::Tuple(t) = &pid else {
        return Err("persistent id is not a tuple".into());
    };
    // Zip files: ('storage', type, key, location, numel); legacy files add a view's metadata,
    // None unless the storage was a view of another (torch < 0.4).
    let fields = match t.as_slice() {
        [five @ .., Value::None] if five.len() == 5 => five,
        [.., view] if t.len() == 6 && !matches!(view, Value::None) => {
            return Err("storage views (files of torch < 0.4) are not supported".into())
        }
        all => all,
    };
    match fields {
        [Value::Str(kind), ty, key, _location, numel] if &**kind == "storage" => {
            let Value::Global(ty) = ty else {
                return Err("storage type is not a class".into());
            };
            let (dtype, elem) =
                storage_dtype(ty).ok_or_else(|| format!("unknown storage type {ty}"))?;
            let key = match key {
                Value::Str(s) => s.to_string(),
                Value::Int(i) => i.to_string(),
                _ => return Err("storage key is not a string".into()),
            };
            let numel = int_of(numel, "storage size")?;
            Ok(Value::Storage(Rc::new(Storage { key, dtype, elem, numel })))
        }
        _ => Err("persistent id is not a torch storage".into()),
    }
}

/// A call the file asks for: tensor rebuilds are understood, everything else is recorded.
fn call(f: Value, args: Value) -> Result<Value, String> {
    let Value::Global(name) = &f else {
        // Calling an instance (rare): an opaque result.
        return Ok(Value::Object(Rc::new(Opaque {
            class: "<call>".into(),
            args,
            state: RefCell::new(None),
        })));
    };
    let arg = |i: usize| -> Option<Value> {
        match &args {
            Value::Tuple(t) => t.get(i).cloned(),
            _ => None,
        }
    };
    match &**name {
        "torch._utils._rebuild_tensor" | "torch._utils._rebuild_tensor_v2" => {
            let (Some(Value::Storage(storage)), Some(offset), Some(shape), Some(stride)) =
                (arg(0), arg(1), arg(2), arg(3))
            else {
                return Err(format!("{name}: unexpected arguments"));
            };
            let tensor = TensorRef {
                storage,
                offset: int_of(&offset, "offset")?,
                shape: ints_of(&shape, "size")?,
                stride: ints_of(&stride, "stride")?,
            };
            if tensor.shape.len() != tensor.stride.len() {
                return Err(format!("{name}: size and stride differ in length"));
            }
            Ok(Value::Tensor(Rc::new(tensor)))
        }
        // A Parameter wraps its tensor.
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
            match arg(0) {
                Some(t @ Value::Tensor(_)) => Ok(t),
                _ => Err(format!("{name}: unexpected arguments")),
            }
        }
        // A tensor subclass: `func(*args)` rebuilds the tensor, the type is only a wrapper.
        "torch._tensor._rebuild_from_type_v2" | "torch._tensor._rebuild_from_type" => {
            match (arg(0), arg(2)) {
                (Some(Value::Global(inner)), Some(inner_args))
                    if inner.starts_with("torch._utils._rebuild_") =>
                {
                    call(Value::Global(inner), inner_args)
                }
                _ => Err(format!("{name}: unexpected arguments")),
            }
        }
        "collections.OrderedDict" | "builtins.dict" | "__builtin__.dict" => {
            let items = match arg(0) {
                Some(Value::List(l)) => l.borrow().clone(),
                Some(Value::Tuple(t)) => (*t).clone(),
                _ => Vec::new(),
            };
            let mut d = Vec::new();
            for item in items {
                if let Value::Tuple(p) = &item {
                    if let [k, v] = p.as_slice() {
                        d.push((k.clone(), v.clone()));
                    }
                }
            }
            Ok(Value::Dict(Rc::new(RefCell::new(d))))
        }
        // `copyreg._reconstructor(cls, base, state)` makes an instance of `cls`.
        "copyreg._reconstructor" | "copy_reg._reconstructor" => {
            let class = match arg(0) {
                Some(Value::Global(c)) => c,
                _ => "<object>".into(),
            };
            Ok(Value::Object(Rc::new(Opaque { class, args, state: RefCell::new(None) })))
        }
        _ => Ok(Value::Object(Rc::new(Opaque {
            class: name.clone(),
            args,
            state: RefCell::new(None),
        }))),
    }
}

/// Where a file's storages are, shared by every tensor's lazy reader: the zip's entries
/// (torch ≥ 1.6), or byte ranges after a legacy file's pickles.
struct Archive {
    path: PathBuf,
    kind: StorageBytes,
}

enum StorageBytes {
    Zip {
        zip: RefCell<zip::ZipArchive<BufReader<File>>>,
        /// `archive/` (or the name torch gave the archive) before `data.pkl`.
        prefix: String,
    },
    /// Storage key → (offset in the file, bytes).
    Legacy(HashMap<String, (u64, u64)>),
}

impl Archive {
    /// How many bytes the file holds for storage `key`.
    fn size(&self, key: &str) -> Option<u64> {
        match &self.kind {
            StorageBytes::Zip { zip, prefix } => {
                zip.borrow_mut().by_name(&format!("{prefix}data/{key}")).ok().map(|e| e.size())
            }
            StorageBytes::Legacy(ranges) => ranges.get(key).map(|r| r.1),
        }
    }

    /// The first `n` bytes of storage `key`.
    fn read(&self, key: &str, n: usize) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(n.min(self.size(key).unwrap_or(0) as usize));
        match &self.kind {
            StorageBytes::Zip { zip, prefix } => {
                let name = format!("{prefix}data/{key}");
                let mut zip = zip.borrow_mut();
                let entry = zip.by_name(&name).map_err(|e| format!("{name}: {e}"))?;
                entry.take(n as u64).read_to_end(&mut out).map_err(|e| format!("{name}: {e}"))?;
            }
            StorageBytes::Legacy(ranges) => {
                use std::io::{Seek, SeekFrom};
                let &(at, _) = ranges.get(key).ok_or_else(|| format!("no storage {key}"))?;
                let mut f = File::open(&self.path).map_err(|e| e.to_string())?;
                f.seek(SeekFrom::Start(at)).map_err(|e| e.to_string())?;
                f.take(n as u64).read_to_end(&mut out).map_err(|e| e.to_string())?;
            }
        }
        if out.len() < n {
            return Err(format!("storage {key}: {} bytes, {n} needed", out.len()));
        }
        Ok(out)
    }
}

/// The tensor's elements in row-major order, gathered through its strides.
fn gather(t: &TensorRef, storage: &[u8]) -> Vec<u8> {
    let elem = t.storage.elem;
    let count: usize = t.shape.iter().product();
    let mut contiguous = true;
    let mut expect = 1;
    for (&d, &s) in t.shape.iter().zip(&t.stride).rev() {
        if d > 1 && s != expect {
            contiguous = false;
        }
        expect *= d;
    }
    if contiguous {
        return storage[t.offset * elem..(t.offset + count) * elem].to_vec();
    }
    let mut out = Vec::with_capacity(count * elem);
    let mut index = vec![0usize; t.shape.len()];
    for _ in 0..count {
        let at = t.offset + index.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&storage[at * elem..(at + 1) * elem]);
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < t.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    out
}

/// Checks a tensor against its storage and the bytes the file holds for it; returns how many
/// bytes of the storage it needs.
fn check_extent(t: &TensorRef, archive: &Archive) -> Result<usize, String> {
    let s = &t.storage;
    let have = archive
        .size(&s.key)
        .ok_or_else(|| format!("storage {} is missing from the file", s.key))?;
    let claimed = s.numel.checked_mul(s.elem).ok_or("storage size overflows")?;
    if claimed as u64 > have {
        return Err(format!("storage {} claims {claimed} bytes, the file holds {have}", s.key));
    }
    let count =
        t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("tensor size overflows")?;
    if count == 0 {
        return Ok(0);
    }
    let last = t
        .shape
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |a, (&d, &st)| (d - 1).checked_mul(st).and_then(|x| x.checked_add(a)))
        .ok_or("tensor extent overflows")?;
    if last >= s.numel {
        return Err(format!(
            "tensor reaches element {last} of storage {} which has {}",
            s.key, s.numel
        ));
    }
    Ok((last + 1) * s.elem)
}

fn snapshot(t: Rc<TensorRef>, archive: Rc<Archive>, name: &str) -> Result<TensorSnapshot, String> {
    let needed = check_extent(&t, &archive)?;
    let dtype = t.storage.dtype;
    let shape = t.shape.clone();
    let key = t.storage.key.clone();
    let path = archive.path.clone();
    let tensor = t.clone();
    let data_fn = Rc::new(move || -> Result<TensorData, TensorSnapshotError> {
        let bytes = archive
            .read(&key, needed)
            .map_err(|e| TensorSnapshotError::IoError(format!("{}: {e}", path.display())))?;
        let bytes = if needed == 0 { Vec::new() } else { gather(&tensor, &bytes) };
        Ok(TensorData::from_bytes_vec(bytes, tensor.shape.clone(), dtype))
    });
    Ok(TensorSnapshot::from_closure(
        data_fn,
        dtype,
        shape.into(),
        name.split('.').map(String::from).collect(),
        vec![],
        ParamId::new(),
    ))
}

/// Collects the tensors under `v` (through string-keyed dicts, dotted), and counts what is not.
fn collect(
    v: &Value,
    path: &mut Vec<String>,
    out: &mut Vec<(String, Rc<TensorRef>)>,
    other: &mut BTreeMap<String, usize>,
    depth: usize,
) {
    if depth > 64 {
        return;
    }
    match v {
        Value::Tensor(t) => out.push((path.join("."), t.clone())),
        Value::Dict(d) => {
            for (k, v) in d.borrow().iter() {
                match k {
                    Value::Str(k) => {
                        path.push(k.to_string());
                        collect(v, path, out, other, depth + 1);
                        path.pop();
                    }
                    _ => *other.entry(path.join(".")).or_default() += 1,
                }
            }
        }
        _ => *other.entry(path.join(".")).or_default() += 1,
    }
}

/// A short description of a value a checkpoint holds but weights do not need.
fn describe(v: &Value) -> String {
    let mut tensors = 0usize;
    let mut classes = BTreeSet::new();
    count_inside(v, &mut tensors, &mut classes, 0);
    let kind = match v {
        Value::None => "None".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Str(s) => format!("{:?}", s.chars().take(40).collect::<String>()),
        Value::List(l) => format!("list of {}", l.borrow().len()),
        Value::Tuple(t) => format!("tuple of {}", t.len()),
        Value::Dict(d) => format!("dict of {}", d.borrow().len()),
        Value::Object(o) => format!("a {}", o.class),
        Value::Tensor(_) => "a tensor".into(),
        _ => "a value".into(),
    };
    let mut parts = vec![kind];
    if tensors > 0 && !matches!(v, Value::Tensor(_)) {
        parts.push(format!("{tensors} tensors"));
    }
    let classes: Vec<String> =
        classes.into_iter().filter(|c| !matches!(v, Value::Object(o) if &*o.class == c)).collect();
    if !classes.is_empty() {
        parts.push(format!("objects of {}", classes.join(", ")));
    }
    parts.join("; ")
}

fn count_inside(v: &Value, tensors: &mut usize, classes: &mut BTreeSet<String>, depth: usize) {
    if depth > 64 {
        return;
    }
    if let Value::Object(o) = v {
        classes.insert(o.class.to_string());
    }
    let mut each = |x: &Value| count_inside(x, tensors, classes, depth + 1);
    match v {
        Value::Tensor(_) => *tensors += 1,
        Value::List(l) | Value::Set(l) => l.borrow().iter().for_each(each),
        Value::Tuple(t) => t.iter().for_each(each),
        Value::Dict(d) => d.borrow().iter().for_each(|(k, v)| {
            each(k);
            each(v)
        }),
        Value::Object(o) => {
            if let Some(s) = o.state.borrow().as_ref() {
                each(s);
            }
            each(&o.args);
        }
        _ => {}
    }
}

/// Reads a torch file, zip-format (torch ≥ 1.6) or legacy. With `top_key`, only the tensors
/// under that top-level entry are taken when the file's root is a dict holding it (Lightning's
/// `state_dict`); every other entry is reported in [`TorchFile::skipped`].
pub fn read_torch_file(path: &Path, top_key: Option<&str>) -> Result<TorchFile, TorchFileError> {
    if !is_zip(path) {
        return read_legacy_torch_file(path, top_key);
    }
    let format = |message: String| TorchFileError::Format { path: path.into(), message };
    let file =
        File::open(path).map_err(|source| TorchFileError::Io { path: path.into(), source })?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| format(format!("not a zip-format torch file: {e}")))?;
    let pickle_name = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i).map(String::from))
        .filter(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
        .min_by_key(|n| n.len())
        .ok_or_else(|| format("no data.pkl in the archive (not written by torch.save)".into()))?;
    let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
    if let Ok(mut e) = zip.by_name(&format!("{prefix}byteorder")) {
        let mut s = String::new();
        let _ = (&mut e).take(16).read_to_string(&mut s);
        if s.trim() == "big" {
            return Err(format("big-endian torch files are not supported".into()));
        }
    }
    let pickle = {
        let mut e = zip.by_name(&pickle_name).map_err(|e| format(e.to_string()))?;
        const MAX_PICKLE: u64 = 1 << 30;
        if e.size() > MAX_PICKLE {
            return Err(format(format!(
                "data.pkl claims {} bytes (more than 1 GiB of object structure)",
                e.size()
            )));
        }
        let mut buf = Vec::with_capacity(e.size() as usize);
        (&mut e)
            .take(MAX_PICKLE)
            .read_to_end(&mut buf)
            .map_err(|source| TorchFileError::Io { path: path.into(), source })?;
        buf
    };
    // `_containers` lives to the end: dropping it frees every value, cyclic ones included.
    let (root, globals, _containers) =
        Machine::new(&pickle).run().map_err(|m| format(format!("{pickle_name}: {m}")))?;
    let kind = StorageBytes::Zip { zip: RefCell::new(zip), prefix };
    let archive = Rc::new(Archive { path: path.into(), kind });
    tensors_of(root, &globals, archive, top_key)
}

/// Reads a legacy torch file (`torch.save` before 1.6, or with
/// `_use_new_zipfile_serialization=False`): pickles of the magic number, the protocol version,
/// system info, the object and its storage keys, then each storage as an 8-byte element count and
/// its bytes. Every claimed size is checked against the bytes present before anything is read.
fn read_legacy_torch_file(path: &Path, top_key: Option<&str>) -> Result<TorchFile, TorchFileError> {
    let format = |message: String| TorchFileError::Format { path: path.into(), message };
    let bytes =
        std::fs::read(path).map_err(|source| TorchFileError::Io { path: path.into(), source })?;
    let mut pos = 0usize;
    let mut next = |what: &str| {
        let ran =
            Machine::new(&bytes[pos..]).run_counted().map_err(|m| format(format!("{what}: {m}")));
        if let Ok((.., used, _)) = &ran {
            pos += used;
        }
        ran
    };
    let (magic, ..) = next("not a torch file (its magic number)")?;
    if !matches!(magic, Value::BigInt) {
        return Err(format(
            "not a torch file (neither a zip archive nor torch's magic number)".into(),
        ));
    }
    let (version, ..) = next("the protocol version")?;
    if !matches!(version, Value::Int(1001)) {
        return Err(format("not a torch file (protocol version is not 1001)".into()));
    }
    let (info, _, _info_containers, ..) = next("the system info")?;
    if let Value::Dict(d) = &info {
        let big = d.borrow().iter().any(|(k, v)| {
            matches!(k, Value::Str(k) if &**k == "little_endian") && matches!(v, Value::Bool(false))
        });
        if big {
            return Err(format("big-endian torch files are not supported".into()));
        }
    }
    let (root, globals, _containers, _, storages) = next("the saved object")?;
    let (keys, _, _key_containers, ..) = next("the storage keys")?;
    let keys: Vec<String> = match &keys {
        Value::List(l) => l
            .borrow()
            .iter()
            .map(|k| match k {
                Value::Str(s) => Ok(s.to_string()),
                Value::Int(i) => Ok(i.to_string()),
                _ => Err(format("a storage key is not a string".into())),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(format("the storage keys are not a list".into())),
    };
    let elem: HashMap<&str, usize> = storages.iter().map(|s| (s.key.as_str(), s.elem)).collect();
    let mut ranges = HashMap::new();
    for key in &keys {
        let count = bytes
            .get(pos..pos + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .ok_or_else(|| format(format!("storage {key}: the file ends before its size")))?;
        let size = elem.get(key.as_str()).copied().unwrap_or(1) as u64;
        let len = count
            .checked_mul(size)
            .filter(|&n| n <= (bytes.len() - pos - 8) as u64)
            .ok_or_else(|| {
                format(format!(
                    "storage {key} claims {count} elements, more than the {} bytes left in the file",
                    bytes.len() - pos - 8
                ))
            })?;
        ranges.insert(key.clone(), ((pos + 8) as u64, len));
        pos += 8 + len as usize;
    }
    drop(bytes);
    let archive = Rc::new(Archive { path: path.into(), kind: StorageBytes::Legacy(ranges) });
    tensors_of(root, &globals, archive, top_key)
}

/// The tensors of a decoded torch object (under `top_key` when it holds one), with what else
/// it holds reported; tensors read their bytes lazily from `archive`.
fn tensors_of(
    root: Value,
    globals: &BTreeSet<String>,
    archive: Rc<Archive>,
    top_key: Option<&str>,
) -> Result<TorchFile, TorchFileError> {
    let format = |message: String| TorchFileError::Format { path: archive.path.clone(), message };
    let mut skipped = Vec::new();
    let selected = match (&root, top_key) {
        (Value::Dict(d), Some(key))
            if d.borrow().iter().any(|(k, _)| matches!(k, Value::Str(s) if &**s == key)) =>
        {
            let mut chosen = Value::None;
            for (k, v) in d.borrow().iter() {
                match k {
                    Value::Str(s) if &**s == key => chosen = v.clone(),
                    Value::Str(s) => skipped.push(format!("{s}: {}", describe(v))),
                    _ => skipped.push(format!("a non-string key: {}", describe(v))),
                }
            }
            chosen
        }
        _ => root.clone(),
    };
    let mut found = Vec::new();
    let mut other = BTreeMap::new();
    collect(&selected, &mut Vec::new(), &mut found, &mut other, 0);
    for (key, n) in other {
        let key = if key.is_empty() { "(root)".to_string() } else { key };
        skipped.push(format!("{key}: {n} non-tensor value(s)"));
    }
    let built: BTreeSet<&str> = [
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch._tensor._rebuild_from_type_v2",
        "collections.OrderedDict",
    ]
    .into();
    let foreign: Vec<&str> = globals
        .iter()
        .map(String::as_str)
        .filter(|g| {
            !built.contains(g)
                && storage_dtype(g).is_none()
                && !g.starts_with("copyreg.")
                && !g.starts_with("builtins.")
        })
        .collect();
    if !foreign.is_empty() {
        skipped.push(format!("classes recorded, not built: {}", foreign.join(", ")));
    }
    dispose([selected, root]);
    let mut tensors = BTreeMap::new();
    for (name, t) in found {
        let snap =
            snapshot(t, archive.clone(), &name).map_err(|m| format(format!("{name}: {m}")))?;
        tensors.insert(name, snap);
    }
    Ok(TorchFile { tensors, skipped })
}

/// Whether a file is a zip archive (torch's format since 1.6) rather than a legacy pickle.
pub fn is_zip(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == *b"PK\x03\x04"
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Emits pickle opcodes (protocol 2, the one `torch.save` uses).
    #[derive(Default)]
    struct Pickle(Vec<u8>);

    impl Pickle {
        fn op(&mut self, b: &[u8]) -> &mut Self {
            self.0.extend_from_slice(b);
            self
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.0.push(b'X');
            self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
            self.0.extend_from_slice(s.as_bytes());
            self
        }
        fn int(&mut self, v: u32) -> &mut Self {
            self.0.push(b'J');
            self.0.extend_from_slice(&(v as i32).to_le_bytes());
            self
        }
        fn long(&mut self, v: u64) -> &mut Self {
            self.0.extend_from_slice(&[0x8a, 8]);
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn global(&mut self, module: &str, name: &str) -> &mut Self {
            self.0.push(b'c');
            self.0.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
            self
        }
        /// `_rebuild_tensor_v2(storage(key, numel), offset, size, stride, False, OrderedDict())`.
        fn tensor(
            &mut self,
            key: &str,
            numel: u64,
            offset: u32,
            size: &[u32],
            stride: &[u32],
        ) -> &mut Self {
            self.global("torch._utils", "_rebuild_tensor_v2").op(b"(");
            self.op(b"(")
                .str("storage")
                .global("torch", "FloatStorage")
                .str(key)
                .str("cpu")
                .long(numel)
                .op(b"tQ");
            self.int(offset).op(b"(");
            size.iter().for_each(|&s| {
                self.int(s);
            });
            self.op(b"t(");
            stride.iter().for_each(|&s| {
                self.int(s);
            });
            self.op(b"t").op(&[0x89]).global("collections", "OrderedDict").op(b")R").op(b"tR")
        }
    }

    fn write_zip(dir: &Path, pickle: &[u8], storages: &[(&str, Vec<u8>)]) -> PathBuf {
        let path = dir.join("file.ckpt");
        let mut zip = zip::ZipWriter::new(File::create(&path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zip.start_file("archive/data.pkl", opts).unwrap();
        zip.write_all(pickle).unwrap();
        for (key, bytes) in storages {
            zip.start_file(format!("archive/data/{key}"), opts).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
        path
    }

    /// Files `torch.save` wrote in the legacy format (tests/fixtures/make_legacy.py, torch 2.9
    /// with `_use_new_zipfile_serialization=False`): every tensor as torch had it, a view
    /// (transposed, sharing its storage) included; a Lightning-style dict's `state_dict` taken.
    #[test]
    fn legacy_files_read_as_torch_saved_them() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixtures.join("legacy_expected.json")).unwrap())
                .unwrap();
        let expected = expected.as_object().unwrap();
        for (file, top) in
            [("legacy_state.pth", None), ("legacy_lightning.ckpt", Some("state_dict"))]
        {
            let read = read_torch_file(&fixtures.join(file), top).unwrap();
            assert_eq!(read.tensors.len(), expected.len(), "{file}");
            for (name, want) in expected {
                let snap = &read.tensors[name];
                let shape: Vec<usize> = want["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                let data = snap.to_data().unwrap();
                assert_eq!(data.shape.to_vec(), shape, "{file}: {name}");
                let got = data.convert::<f32>().to_vec::<f32>().unwrap();
                let want: Vec<f32> = want["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect();
                assert_eq!(got, want, "{file}: {name}");
            }
            if top.is_some() {
                assert!(read.skipped.iter().any(|s| s.starts_with("epoch")), "{:?}", read.skipped);
            }
        }
    }

    /// A legacy file whose storage claims more elements than the file holds, or that ends early,
    /// is an error naming what is wrong; nothing that large is allocated.
    #[test]
    fn legacy_claims_beyond_the_file_are_errors() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let good = std::fs::read(fixtures.join("legacy_state.pth")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.pth");
        // The storages follow the keys' pickle (which ends with b"e." or b"]q..."): the first
        // 8-byte count after it is found by reading the good file the same way.
        let bytes = &good[..];
        let mut pos = 0;
        for _ in 0..5 {
            pos += Machine::new(&bytes[pos..]).run_counted().unwrap().3;
        }
        let mut huge = good.clone();
        huge[pos..pos + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        std::fs::write(&path, &huge).unwrap();
        let err = read_torch_file(&path, None).err().expect("an error").to_string();
        assert!(err.contains("bad.pth") && err.contains("more than the"), "{err}");
        std::fs::write(&path, &good[..good.len() - 10]).unwrap();
        assert!(read_torch_file(&path, None).is_err(), "a truncated file");
        // Found by fuzzing (fuzz/RESULTS.md, bug 4): 356 bytes whose string claims 4 GiB made
        // burn-store's legacy reader allocate it; read here, it is an error.
        let oom = fixtures.join("fuzz/legacy-4gib-string.pth");
        assert!(read_torch_file(&oom, None).is_err());
        std::fs::write(&path, b"\x80\x02K\x05.not torch").unwrap();
        let err = read_torch_file(&path, None).err().expect("an error").to_string();
        assert!(err.contains("not a torch file"), "{err}");
    }

    /// Found by fuzzing (fuzz/RESULTS.md, LeakSanitizer): the memo lets a pickle put a
    /// container inside itself, a reference cycle; every value must still be freed.
    #[test]
    fn self_containing_containers_are_freed() {
        // a = []; a.append(a)  and  d = {}; d["k"] = d
        let list: &[u8] = b"\x80\x02]q\x00h\x00a.";
        let dict: &[u8] = b"\x80\x02}q\x00X\x01\x00\x00\x00kh\x00s.";
        let (root, _, containers) = Machine::new(list).run().unwrap();
        let Value::List(rc) = &root else { panic!("not a list") };
        let weak = Rc::downgrade(rc);
        drop((root, containers));
        assert_eq!(weak.strong_count(), 0, "the list holding itself is freed");
        let (root, _, containers) = Machine::new(dict).run().unwrap();
        let Value::Dict(rc) = &root else { panic!("not a dict") };
        let weak = Rc::downgrade(rc);
        drop((root, containers));
        assert_eq!(weak.strong_count(), 0, "the dict holding itself is freed");
        // What a machine that stops on an error drops: its containers, cycles included.
        let a: Rc<RefCell<Vec<Value>>> = Rc::default();
        a.borrow_mut().push(Value::List(a.clone()));
        let weak = Rc::downgrade(&a);
        drop(Containers(vec![Value::List(a)]));
        assert_eq!(weak.strong_count(), 0, "a cycle left by a failed run is freed");
        // A file whose data.pkl is such a dict still reads (no tensors, nothing left behind).
        let dir = tempfile::tempdir().unwrap();
        let file = read_torch_file(&write_zip(dir.path(), dict, &[]), None).unwrap();
        assert!(file.tensors.is_empty());
        // And a cycle left on the stack when the pickle turns out bad: freed by the machine.
        let bad: &[u8] = b"\x80\x02]q\x00h\x00a\xff";
        assert!(Machine::new(bad).run().is_err());
    }

    fn floats(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn reads_state_dict_past_unknown_classes_int_keys_and_strided_views() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Pickle::default();
        p.op(&[0x80, 2]).op(b"}").op(b"(");
        // hyper_parameters: {"config": __main__.Config(device=torch.device("cuda"))}
        p.str("hyper_parameters").op(b"}").str("config");
        p.global("__main__", "Config").op(b")").op(&[0x81]).op(b"}").str("device");
        p.global("torch", "device").str("cuda").op(&[0x85]).op(b"R").op(b"s").op(b"b").op(b"s");
        // optimizer_states: [{"state": {0: {"step": tensor}}}]
        p.str("optimizer_states")
            .op(b"]")
            .op(b"}")
            .str("state")
            .op(b"}")
            .int(0)
            .op(b"}")
            .str("exp_avg");
        p.tensor("1", 2, 0, &[2], &[1]).op(b"sssa");
        // state_dict: an OrderedDict with a transposed view and an offset view of one storage.
        p.str("state_dict").global("collections", "OrderedDict").op(b")R").op(b"(");
        p.str("w.t").tensor("0", 6, 0, &[3, 2], &[1, 3]);
        p.str("w.row").tensor("0", 6, 3, &[3], &[1]);
        p.op(b"u").op(b"u.");
        let path = write_zip(
            dir.path(),
            &p.0,
            &[("0", floats(&[0., 1., 2., 3., 4., 5.])), ("1", floats(&[9., 9.]))],
        );

        let file = read_torch_file(&path, Some("state_dict")).unwrap();
        assert_eq!(file.tensors.keys().collect::<Vec<_>>(), ["w.row", "w.t"]);
        let t = file.tensors["w.t"].to_data().unwrap();
        assert_eq!(t.shape.to_vec(), vec![3, 2]);
        assert_eq!(t.to_vec::<f32>().unwrap(), vec![0., 3., 1., 4., 2., 5.]);
        assert_eq!(
            file.tensors["w.row"].to_data().unwrap().to_vec::<f32>().unwrap(),
            vec![3., 4., 5.]
        );
        let skipped = file.skipped.join("\n");
        assert!(
            skipped
                .contains("hyper_parameters: dict of 1; objects of __main__.Config, torch.device"),
            "{skipped}"
        );
        assert!(skipped.contains("optimizer_states: list of 1; 1 tensors"), "{skipped}");
        assert!(
            skipped.contains("classes recorded, not built: __main__.Config, torch.device"),
            "{skipped}"
        );
    }

    #[test]
    fn sizes_the_file_does_not_hold_are_errors_not_allocations() {
        let dir = tempfile::tempdir().unwrap();
        // A storage claiming 2^40 floats (4 TiB) backed by 16 bytes.
        let mut p = Pickle::default();
        p.op(&[0x80, 2])
            .op(b"}")
            .str("w")
            .tensor("0", 1 << 40, 0, &[1 << 20, 1 << 20], &[1 << 20, 1])
            .op(b"s.");
        let path = write_zip(dir.path(), &p.0, &[("0", floats(&[1., 2., 3., 4.]))]);
        let err = read_torch_file(&path, None).err().unwrap().to_string();
        assert!(err.contains("claims 4398046511104 bytes, the file holds 16"), "{err}");
        // A view reaching past its storage.
        let mut p = Pickle::default();
        p.op(&[0x80, 2]).op(b"}").str("w").tensor("0", 4, 2, &[3], &[1]).op(b"s.");
        let path = write_zip(dir.path(), &p.0, &[("0", floats(&[1., 2., 3., 4.]))]);
        let err = read_torch_file(&path, None).err().unwrap().to_string();
        assert!(err.contains("reaches element 4 of storage 0 which has 4"), "{err}");
        // A missing storage entry.
        let path = write_zip(dir.path(), &p.0, &[]);
        assert!(read_torch_file(&path, None)
            .err()
            .unwrap()
            .to_string()
            .contains("storage 0 is missing"));
    }

    #[test]
    fn containers_nested_deeper_than_the_stack_are_read_and_freed_without_recursion() {
        let dir = tempfile::tempdir().unwrap();
        // A million nested 1-tuples around a dict, then the same nesting left on the stack at a
        // truncation: both the value and the error path free it all.
        let mut p = vec![0x80, 2, b'}'];
        p.extend(std::iter::repeat_n(0x85, 1_000_000));
        let mut whole = p.clone();
        whole.push(b'.');
        let path = write_zip(dir.path(), &whole, &[]);
        let file = read_torch_file(&path, None).unwrap();
        assert!(file.tensors.is_empty());
        let path = write_zip(dir.path(), &p, &[]);
        assert!(read_torch_file(&path, None).is_err());
    }

    #[test]
    fn truncated_or_garbled_pickles_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Pickle::default();
        p.op(&[0x80, 2]).op(b"}").str("w").tensor("0", 4, 0, &[4], &[1]).op(b"s.");
        let whole = p.0.clone();
        for cut in [1, 5, whole.len() / 2, whole.len() - 1] {
            let path = write_zip(dir.path(), &whole[..cut], &[("0", floats(&[1., 2., 3., 4.]))]);
            assert!(read_torch_file(&path, None).is_err(), "cut at {cut}");
        }
        let mut bad = whole.clone();
        bad[2] = 0xff; // not an opcode
        let path = write_zip(dir.path(), &bad, &[]);
        assert!(read_torch_file(&path, None)
            .err()
            .unwrap()
            .to_string()
            .contains("unknown pickle opcode 0xff"));
        // A string claiming 4 GiB.
        let path = write_zip(dir.path(), &[0x80, 2, b'X', 0xff, 0xff, 0xff, 0xff, b'a'], &[]);
        assert!(read_torch_file(&path, None)
            .err()
            .unwrap()
            .to_string()
            .contains("pickle truncated"));
        std::fs::write(dir.path().join("plain.ckpt"), b"not a zip").unwrap();
        assert!(!is_zip(&dir.path().join("plain.ckpt")));
        assert!(read_torch_file(&dir.path().join("plain.ckpt"), None).is_err());
    }
}
