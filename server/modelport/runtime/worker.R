# modelport's R replica: source the entry's file, describe its function, then serve calls on two pipes.
#
#   Rscript worker.R PROJECT FILE.R FUNCTION IN_FD OUT_FD
#
# Started by the Python worker (modelport/runtime/rbridge.py), which speaks the server's frames and
# relays each call here, already validated against the function's schema. In: each call as an R
# object in R's serialization, list(by, args): the time (the wall clock; 0: none) by which it must
# start, and its arguments as a named list, or as JSON text (for jsonlite: it has arrays). Calls
# may be queued in the pipe: they are answered one by one, in order. Out: frames, the payload's
# length in bytes as 8 hex digits, then the payload, whose first byte says what it is:
#   Y  ready: the function's signature (JSON)      B  boot failure: the error text
#   M  a metric of the coming answer: {"name": v}  R  the answer (JSON)
#   E  the function failed: the error text         S  skipped: it was queued past its time
# SIGTERM is ignored (R would die at once mid-call): the Python worker drains by closing IN_FD.

local({
  argv <- commandArgs(trailingOnly = TRUE)
  if (length(argv) != 5L) {
    cat("usage: Rscript worker.R PROJECT FILE.R FUNCTION IN_FD OUT_FD\n", file = stderr())
    quit(save = "no", status = 2L)
  }
  project <- argv[[1L]]
  file <- argv[[2L]]
  fname <- argv[[3L]]
  out <- file(sprintf("/dev/fd/%s", argv[[5L]]), open = "wb", raw = TRUE)
  inp <- file(sprintf("/dev/fd/%s", argv[[4L]]), open = "rb", raw = TRUE)

  send <- function(kind, text) {  # (writeChar costs half of two writeBin calls)
    writeChar(sprintf("%08x%s%s", nchar(text, type = "bytes") + 1L, kind, text), out,
              eos = NULL, useBytes = TRUE)
    flush(out)
  }

  # -- JSON out: a small encoder for the common types (jsonlite's toJSON costs ~200 µs a call) --

  num <- function(x) {
    if (any(is.infinite(x) | is.nan(x))) {
      stop("the result holds a number JSON cannot carry (infinity or NaN)", call. = FALSE)
    }
    s <- sprintf("%.15g", x)
    short <- suppressWarnings(as.numeric(s))
    bad <- which(short != x)
    if (length(bad)) s[bad] <- sprintf("%.17g", x[bad])
    s[is.na(x)] <- "null"
    s
  }
  controls <- intToUtf8(c(1:31, 127L), multiple = TRUE)
  str <- function(x) {
    x <- as.character(x)
    # Text marked latin1 is converted; unmarked (native, UTF-8 here) or "bytes" text must be
    # UTF-8 already (enc2utf8 would quietly write invalid bytes as "<e9>").
    bad <- !is.na(x) & !validUTF8(x) & Encoding(x) != "latin1"
    if (any(bad)) stop("the result holds a string that is not valid UTF-8", call. = FALSE)
    x <- enc2utf8(x)
    esc <- grepl("[\"\\\\\x01-\x1f\x7f]", x, perl = TRUE) & !is.na(x)
    if (any(esc)) {
      s <- x[esc]
      s <- gsub("\\", "\\\\", s, fixed = TRUE)
      s <- gsub("\"", "\\\"", s, fixed = TRUE)
      s <- gsub("\n", "\\n", s, fixed = TRUE)
      s <- gsub("\t", "\\t", s, fixed = TRUE)
      s <- gsub("\r", "\\r", s, fixed = TRUE)
      for (ch in controls) {
        if (any(grepl(ch, s, fixed = TRUE))) {
          s <- gsub(ch, sprintf("\\u%04x", utf8ToInt(ch)), s, fixed = TRUE)
        }
      }
      x[esc] <- s
    }
    out <- paste0("\"", x, "\"")
    out[is.na(x)] <- "null"
    out
  }
  # Each element of an atomic vector (or a list: each item) as JSON text.
  atoms <- function(x) {
    if (is.factor(x)) return(str(as.character(x)))
    if (inherits(x, "Date") || inherits(x, "POSIXt")) return(str(format(x, "%Y-%m-%dT%H:%M:%OS")))
    if (is.list(x)) return(vapply(x, to_json, "", USE.NAMES = FALSE))
    switch(typeof(x),
      logical = ifelse(is.na(x), "null", ifelse(x, "true", "false")),
      integer = ifelse(is.na(x), "null", as.character(x)),
      double = num(unclass(x)),
      character = str(x),
      stop(sprintf("a result of type %s cannot be sent as JSON", typeof(x)), call. = FALSE)
    )
  }
  rows <- function(df) {
    if (nrow(df) == 0L) return("[]")
    keys <- paste0(str(names(df)), ":")
    cells <- lapply(seq_along(df), function(j) paste0(keys[[j]], atoms(df[[j]])))
    paste0("[", paste0("{", do.call(paste, c(cells, sep = ",")), "}", collapse = ","), "]")
  }
  to_json <- function(x) {
    if (is.null(attributes(x)) && length(x) == 1L) {  # a plain scalar: the common answer
      t <- typeof(x)
      if (t == "double" && is.finite(x)) {
        s <- sprintf("%.15g", x)
        return(if (as.numeric(s) == x) s else sprintf("%.17g", x))
      }
      if (t == "integer" && !is.na(x)) return(as.character(x))
      if (t == "logical" && !is.na(x)) return(if (x) "true" else "false")
    }
    if (is.null(x)) return("null")
    if (inherits(x, "json")) return(paste(as.character(x), collapse = ""))
    if (is.data.frame(x)) return(rows(x))
    if (is.matrix(x)) {
      if (nrow(x) == 0L) return("[]")
      return(paste0("[", paste0(apply(x, 1L, function(r) paste0("[", paste(atoms(r), collapse = ","), "]")),
                                collapse = ","), "]"))
    }
    if (is.list(x) || is.atomic(x)) {
      items <- atoms(x)
      keys <- names(x)
      if (!is.null(keys)) return(paste0("{", paste0(str(keys), ":", items, collapse = ","), "}"))
      if (length(x) == 1L && !is.list(x)) return(items)
      return(paste0("[", paste(items, collapse = ","), "]"))
    }
    if (requireNamespace("jsonlite", quietly = TRUE)) {  # S4 objects and the like
      return(as.character(jsonlite::toJSON(x, auto_unbox = TRUE, digits = NA, dataframe = "rows",
                                           force = TRUE, null = "null", na = "null")))
    }
    stop(sprintf("a result of class %s cannot be sent as JSON", class(x)[[1L]]), call. = FALSE)
  }

  # -- the signature: formals() and the annotation lines above the function --

  types <- c(numeric = "number", number = "number", dbl = "number", double = "number",
             integer = "integer", int = "integer", character = "string", string = "string",
             chr = "string", logical = "boolean", bool = "boolean", list = "list",
             data.frame = "rows", any = "any")
  type_of <- function(word) {
    word <- sub("^\\{(.*)\\}$", "\\1", word)  # roxygen's {numeric}
    arr <- grepl("^\\[.*\\]$", word) || grepl("\\[\\]$", word)
    base <- sub("^\\[(.*)\\]$", "\\1", sub("\\[\\]$", "", word))
    t <- types[base]
    if (is.na(t)) return(NA_character_)
    if (arr) paste0(t, "[]") else unname(t)
  }
  annotations <- function(path, fname) {
    lines <- readLines(path, warn = FALSE, encoding = "UTF-8")
    pattern <- sprintf("^\\s*`?%s`?\\s*(<-|=|<<-)\\s*function\\b", gsub(".", "\\.", fname, fixed = TRUE))
    at <- grep(pattern, lines, perl = TRUE)
    res <- list(params = list(), return = NA_character_, doc = character())
    if (!length(at)) return(res)
    i <- at[[1L]] - 1L
    block <- character()
    while (i >= 1L && grepl("^\\s*#['*]", lines[[i]])) {
      block <- c(sub("^\\s*#['*]\\s?", "", lines[[i]]), block)
      i <- i - 1L
    }
    for (line in block) {
      if (grepl("^@param\\s", line)) {
        words <- strsplit(sub("^@param\\s+", "", line), "\\s+")[[1L]]
        name <- words[[1L]]
        type <- NA_character_
        if (grepl(":", name, fixed = TRUE)) {  # plumber: a:number
          type <- type_of(sub("^[^:]*:", "", name))
          name <- sub(":.*$", "", name)
        } else if (length(words) > 1L) {
          type <- type_of(words[[2L]])
        }
        res$params[[name]] <- type
      } else if (grepl("^@(return|returns|serializer)\\s", line)) {
        if (grepl("^@return", line)) res$return <- type_of(strsplit(sub("^@returns?\\s+", "", line), "\\s+")[[1L]][[1L]])
      } else if (!grepl("^@", line) && nzchar(trimws(line))) {
        res$doc <- c(res$doc, trimws(line))
      }
    }
    res
  }
  constant <- function(v) {
    if (is.null(v)) return("null")
    if (is.atomic(v) && length(v) <= 1L && !is.symbol(v)) return(tryCatch(to_json(v), error = function(e) NULL))
    if (is.call(v) && identical(v[[1L]], as.name("c"))) {  # c(1, 2): a vector default
      val <- tryCatch(eval(v, baseenv()), error = function(e) NULL)
      if (is.atomic(val)) return(paste0("[", paste(atoms(val), collapse = ","), "]"))
    }
    NULL
  }
  signature <- function(f, path, fname) {
    forms <- formals(f)
    if ("..." %in% names(forms)) {
      stop("`...` cannot be filled from a request: take one list parameter (the whole request) ",
           "or named parameters", call. = FALSE)
    }
    notes <- annotations(path, fname)
    params <- lapply(names(forms), function(n) {
      required <- identical(forms[[n]], quote(expr = ))  # no default (not evaluated)
      t <- notes$params[[n]]
      list(name = n, type = if (is.null(t) || is.na(t)) NULL else t, required = required,
           default = if (required) NULL else constant(forms[[n]]))
    })
    one <- length(params) == 1L && (is.null(params[[1L]]$type) || params[[1L]]$type == "list")
    list(function_name = fname, form = if (one) "dict" else "params", params = params,
         return_type = if (is.na(notes$return)) NULL else notes$return,
         doc = if (length(notes$doc)) paste(notes$doc, collapse = "\n") else NULL)
  }
  describe_json <- function(s) {
    p <- vapply(s$params, function(x) {
      paste0("{\"name\":", str(x$name), ",\"type\":", if (is.null(x$type)) "null" else str(x$type),
             ",\"required\":", if (x$required) "true" else "false",
             ",\"default\":", if (is.null(x$default)) "null" else str(x$default), "}")
    }, "")
    paste0("{\"function\":", str(s$function_name), ",\"form\":", str(s$form),
           ",\"params\":[", paste(p, collapse = ","), "]",
           ",\"return_type\":", if (is.null(s$return_type)) "null" else str(s$return_type),
           ",\"doc\":", if (is.null(s$doc)) "null" else str(s$doc),
           ",\"r_version\":", str(paste(R.version$major, R.version$minor, sep = ".")), "}")
  }

  # modelport::track_metric(name, value): a namespace named modelport, registered in this R
  # process only (nothing installed), exporting the worker's track_metric.
  register_modelport <- function(track_metric) {
    ns <- new.env(parent = baseenv())
    info <- new.env(parent = baseenv())
    info$spec <- c(name = "modelport", version = "0.0.0")
    exports <- new.env(parent = baseenv())
    exports$track_metric <- "track_metric"
    info$exports <- exports
    info$lazydata <- new.env(parent = baseenv())
    info$imports <- list(base = TRUE)
    info$path <- tempdir()
    info$dynlibs <- character()
    info$S3methods <- matrix(NA_character_, 0L, 4L)
    ns$.__NAMESPACE__. <- info
    ns$.packageName <- "modelport"
    ns$track_metric <- track_metric
    tryCatch(.Internal(registerNamespace("modelport", ns)), error = function(e) NULL)
  }

  # -- boot --

  metrics <- list()  # of the call being served
  track_metric <- function(name, value) {
    if (!is.character(name) || length(name) != 1L) stop("track_metric name must be a string")
    value <- suppressWarnings(as.numeric(value))
    if (length(value) != 1L || is.na(value)) stop(sprintf("track_metric value for '%s' must be a number", name))
    metrics[[name]] <<- value
    invisible(NULL)
  }
  register_modelport(track_metric)
  assign("track_metric", track_metric, envir = globalenv())

  boot_error <- function(text) {
    cat(text, "\n", sep = "", file = stderr())
    send("B", text)
    quit(save = "no", status = 3L)
  }
  path <- file.path(project, file)
  if (!file.exists(path)) boot_error(sprintf("entrypoint: file %s not found in the project", file))
  setwd(project)
  loaded <- tryCatch({
    exprs <- parse(path, keep.source = FALSE, encoding = "UTF-8")
    for (e in exprs) eval(e, globalenv())
    TRUE
  }, error = function(e) {
    call <- conditionCall(e)
    where <- if (is.null(call)) "" else paste0(" in ", paste(deparse(call, nlines = 1L), collapse = ""))
    paste0("Error", where, ": ", conditionMessage(e))
  })
  if (!isTRUE(loaded)) boot_error(loaded)
  if (!exists(fname, envir = globalenv(), inherits = FALSE)) {
    boot_error(sprintf("entrypoint: %s defines no function %s", file, fname))
  }
  f <- get(fname, envir = globalenv(), inherits = FALSE)
  if (!is.function(f)) boot_error(sprintf("entrypoint: %s in %s is not a function (it is a %s)", fname, file, class(f)[[1L]]))
  sig <- tryCatch(signature(f, path, fname), error = function(e) boot_error(paste0("entrypoint: ", conditionMessage(e))))
  dict <- sig$form == "dict"
  send("Y", describe_json(sig))

  # -- serve --

  options(warn = 1L)  # a warning goes to stderr as it happens (deferred ones never would)
  fail <- function(e) {  # the function's error: in the log, and its message for the caller
    if (reading) return(NULL)
    call <- conditionCall(e)
    where <- if (is.null(call)) "" else paste0(" in ", paste(deparse(call, nlines = 1L), collapse = ""))
    cat("Error", where, ": ", conditionMessage(e), "\n", sep = "", file = stderr())
    conditionMessage(e)
  }
  parse <- jsonlite::parse_json
  reading <- FALSE
  # The calls, one after another; an error ends it (the function's: answered E, then served on;
  # reading: our input closed or broke, which is how the Python worker drains us).
  serve <- function() repeat {
    reading <<- TRUE
    call <- unserialize(inp)
    reading <<- FALSE
    by <- call[[1L]]
    if (by > 0 && .Internal(Sys.time()) > by) {  # queued past its start_by: not run
      send("S", "")
      next
    }
    args <- call[[2L]]
    if (is.character(args)) args <- parse(args, simplifyVector = TRUE)  # JSON (it has arrays)
    answer <- to_json(if (dict) f(args) else do.call(f, args, quote = TRUE))
    flush(stdout())
    if (length(metrics)) {
      for (name in names(metrics)) send("M", paste0("{", str(name), ":", num(metrics[[name]]), "}"))
      metrics <<- list()
    }
    send("R", answer)
  }
  repeat {
    failed <- tryCatch(serve(), error = fail)
    if (reading) break  # drained
    flush(stdout())
    metrics <- list()
    send("E", enc2utf8(failed))
  }
  quit(save = "no", status = 0L)
})
