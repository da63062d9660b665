# Train the iris classifier and save its parameters to model.rds (run once; model.rds is committed).
#
#   Rscript train.R
#
# A Gaussian naive Bayes model in base R alone: each species' mean and standard deviation of the
# four measurements (R's own iris data set).
features <- c("Sepal.Length", "Sepal.Width", "Petal.Length", "Petal.Width")
by_species <- split(iris[features], iris$Species)
model <- list(
  species = names(by_species),
  means = t(sapply(by_species, colMeans)),
  sds = t(sapply(by_species, function(d) apply(d, 2, sd))),
  priors = as.numeric(table(iris$Species)) / nrow(iris)
)
saveRDS(model, "model.rds", version = 2)
source("predict.R")
guess <- mapply(predict, iris$Sepal.Length, iris$Sepal.Width, iris$Petal.Length, iris$Petal.Width,
                SIMPLIFY = FALSE)
cat("accuracy on the training set:",
    mean(vapply(guess, `[[`, "", "species") == as.character(iris$Species)), "\n")
