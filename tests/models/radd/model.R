# The serving benchmark's R model: the adder's work, the request as one list.
predict <- function(args) args$a + args$b
