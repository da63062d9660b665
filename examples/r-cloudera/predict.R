# A Cloudera ML style function: the request JSON object arrives as one named list.
predict <- function(args) {
  text <- if (is.null(args$text)) "" else as.character(args$text)
  words <- strsplit(trimws(text), "[[:space:]]+")[[1]]
  list(words = length(words[nzchar(words)]), chars = nchar(text), upper = toupper(text))
}
