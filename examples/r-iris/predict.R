# Iris species from four measurements (cm): a model fitted by train.R, read when a replica starts.
model <- readRDS("model.rds")

#' The species of an iris flower, and how sure the model is.
#' @param sepal_length numeric
#' @param sepal_width numeric
#' @param petal_length numeric
#' @param petal_width numeric
#' @return list
predict <- function(sepal_length, sepal_width, petal_length, petal_width) {
  x <- c(sepal_length, sepal_width, petal_length, petal_width)
  log_p <- log(model$priors) + vapply(seq_along(model$species), function(k) {
    sum(dnorm(x, model$means[k, ], model$sds[k, ], log = TRUE))
  }, 0)
  p <- exp(log_p - max(log_p))
  p <- p / sum(p)
  best <- which.max(p)
  if (exists("track_metric")) track_metric("probability", p[[best]])  # in a replica
  list(species = model$species[[best]], probability = p[[best]])
}
